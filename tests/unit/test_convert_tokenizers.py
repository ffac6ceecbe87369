"""Fast tokenizers built from ChatGLM2/3 and Baichuan SentencePiece models give the reference ids on a mixed
Chinese/English/code corpus (over 1,000 lines), with special tokens and each template's chat prompts.

The references: modelscope's ChatGLM2Tokenizer (its own tokenize + convert_tokens_to_ids; it takes special
tokens by name, so text is split at them first, as ChatGLM3's tokenizer does) and, for Baichuan and
SentencePiece's default normalisation, the `sentencepiece` processor that Baichuan's tokenizer wraps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import TEMPLATES
from tunellm.models.convert.tokenizers import CHATGLM3_ROLES, CHATGLM_SPECIALS, convert_tokenizer

EXTRA = ["  two  spaces ", "tab\there", "emoji 😀 ㊙ ｆｕｌｌ", " lead", "trail ", "数字12345 and ４５", "\n\nnew"]
CONVERSATION = Conversation(
    turns=[
        Turn("user", "你好，请用 Python 写一个 hello world"),
        Turn("assistant", 'print("hello world")  # 你好'),
        Turn("user", "再解释一下\n谢谢"),
    ],
    source=Source("test"),
    system="你是一个有帮助的助手。",
)


@pytest.fixture
def corpus(mixed_lines) -> list[str]:
    lines = mixed_lines + EXTRA
    assert len(lines) >= 1000
    return lines


def converted(folder: Path, tmp_path: Path, model_type: str, roles: bool = False):
    from transformers import AutoTokenizer

    if roles:  # ChatGLM3's tokenizer_config names its role tokens
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_roles": list(CHATGLM3_ROLES)}))
    target = tmp_path / "fast"
    target.mkdir()
    convert_tokenizer(folder, target, {"model_type": model_type})
    return AutoTokenizer.from_pretrained(target)


def split_specials(text: str, specials: list[str]) -> list[str]:
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    return [chunk for chunk in re.split(pattern, text) if chunk]


def template_prompts(tokenizer, names: list[str]) -> list[str]:
    texts = []
    for name in names:
        template = TEMPLATES.get(name)(tokenizer)
        for for_generation, conversation in ((True, CONVERSATION), (False, conversation_with_reply())):
            texts += [segment.text for segment in template.render(conversation, for_generation)]
    return texts


def conversation_with_reply() -> Conversation:
    return Conversation([*CONVERSATION.turns, Turn("assistant", "好的。")], CONVERSATION.source, CONVERSATION.system)


@pytest.mark.parametrize("roles", [False, True], ids=["chatglm2", "chatglm3"])
def test_chatglm_tokenizer_matches_the_reference(roles: bool, sentencepiece_folders, corpus, tmp_path: Path) -> None:
    try:
        from modelscope.models.nlp.chatglm2.tokenization import ChatGLM2Tokenizer
    except ImportError as error:
        pytest.skip(f"modelscope's ChatGLM2 tokenizer cannot be imported: {error}")
    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes((sentencepiece_folders["chatglm"] / "tokenizer.model").read_bytes())
    fast = converted(folder, tmp_path, "chatglm", roles=roles)
    slow = ChatGLM2Tokenizer(str(folder / "tokenizer.model"))
    size = slow.tokenizer.sp_model.vocab_size()
    special_ids = {token: slow.get_command(token) for token in CHATGLM_SPECIALS}
    if roles:  # ChatGLM3 numbers its roles right after ChatGLM2's five special tokens
        special_ids.update({role: size + len(CHATGLM_SPECIALS) + i for i, role in enumerate(CHATGLM3_ROLES)})
    special_ids["</s>"] = slow.eos_token_id
    assert {t: fast.convert_tokens_to_ids(t) for t in special_ids} == special_ids
    assert fast.padding_side == "left" and fast.pad_token_id == slow.pad_token_id

    def reference(text: str) -> list[int]:
        ids = []
        for chunk in split_specials(text, list(special_ids)):
            ids += [special_ids[chunk]] if chunk in special_ids else slow.convert_tokens_to_ids(slow.tokenize(chunk))
        return ids

    names = ["chatglm2", "chatglm3"] if roles else ["chatglm2"]
    prompts = template_prompts(fast, names)
    assert any("[gMASK]sop" in p for p in prompts) and (not roles or any("<|user|>" in p for p in prompts))
    lines = corpus + prompts + ["[gMASK]sop" + line for line in corpus[:50]]
    mismatched = [line for line in lines if fast(line, add_special_tokens=False).input_ids != reference(line)]
    assert not mismatched, f"{len(mismatched)} of {len(lines)} differ, first: {mismatched[:3]}"
    for line in corpus[:200]:  # and decoding gives the text back as the reference does
        ids = reference(line)
        assert fast.decode(ids) == slow.tokenizer.decode(ids)


@pytest.mark.parametrize("kind", ["baichuan", "nfkc"])
def test_sentencepiece_tokenizers_match_sentencepiece(kind: str, sentencepiece_folders, corpus, tmp_path: Path) -> None:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_folders[kind] / "tokenizer.model"))
    fast = converted(sentencepiece_folders[kind], tmp_path, "baichuan")
    specials = [processor.id_to_piece(i) for i in range(processor.get_piece_size()) if processor.is_control(i)]
    specials += ["<reserved_106>", "<reserved_107>"] if kind == "baichuan" else []

    def reference(text: str) -> list[int]:
        ids = []
        for chunk in split_specials(text, specials):
            ids += [processor.piece_to_id(chunk)] if chunk in specials else processor.encode(chunk)
        return ids

    prompts = template_prompts(fast, ["baichuan"]) if kind == "baichuan" else []
    assert not prompts or any("<reserved_106>" in p for p in prompts)
    lines = corpus + prompts
    mismatched = [line for line in lines if fast(line, add_special_tokens=False).input_ids != reference(line)]
    assert not mismatched, f"{len(mismatched)} of {len(lines)} differ, first: {mismatched[:3]}"
    ids = processor.encode("数字12345 and hello\n world")
    assert fast.decode(ids) == processor.decode(ids)


def test_chatglm6b_tokenizer_matches_the_reference(ice_text_folder, corpus, tmp_path: Path) -> None:
    try:
        from modelscope.models.nlp.chatglm.tokenization import SPTokenizer
    except ImportError as error:
        pytest.skip(f"modelscope's ChatGLM-6B tokenizer cannot be imported: {error}")
    from tunellm.models.convert.tokenizers import ICE_SPECIALS

    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "ice_text.model").write_bytes((ice_text_folder / "ice_text.model").read_bytes())
    fast = converted(folder, tmp_path, "chatglm")
    slow = SPTokenizer(str(folder / "ice_text.model"))
    specials = {token: slow[token] for token in ICE_SPECIALS}
    assert {t: fast.convert_tokens_to_ids(t) for t in specials} == specials and min(specials.values()) > 20000

    def reference(text: str) -> list[int]:
        ids = []
        for chunk in split_specials(text, list(specials)):
            ids += [specials[chunk]] if chunk in specials else slow.encode(chunk)
        return ids

    prompts = template_prompts(fast, ["chatglm"])
    assert any("[gMASK]<sop>" in p for p in prompts)
    code = ["def f(x):\n\tif x:\n        return  x", "a" + " " * 100 + "b"]
    lines = corpus + prompts + code
    mismatched = [line for line in lines if fast(line, add_special_tokens=False).input_ids != reference(line)]
    assert not mismatched, f"{len(mismatched)} of {len(lines)} differ, first: {mismatched[:3]}"
    for line in corpus[:200] + code:
        ids = reference(line)
        assert fast.decode(ids) == slow.decode(ids)
