"""BOS where the model expects it, on a SentencePiece (Llama-style) tokenizer trained here, offline, in ~0.1 s."""

from __future__ import annotations

import io
import json

import pytest

from tunellm.data.bos import bos_to_add
from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import get_template
from tunellm.data.tokenize import TokenizeOptions, encode_conversation, tokenize_conversations
from tunellm.infer.generate import encode_prompts

WORDS = "the quick brown fox jumps over a lazy dog hello world how are you today instruction response input answer"


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    """A Llama tokenizer (add_bos_token, <s> and </s>) over a 300-piece BPE model trained on a few sentences."""
    import sentencepiece as spm  # in the dev extra: a missing package fails here rather than skipping
    from transformers import AutoTokenizer

    sentences = [" ".join(WORDS.split()[i:] + WORDS.split()[:i]) + f" {i}." for i in range(20)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=300,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        byte_fallback=True,
        minloglevel=2,
    )
    folder = tmp_path_factory.mktemp("sentencepiece")
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(folder)


def chat(*texts: str) -> Conversation:
    roles = ("user", "assistant")
    return Conversation([Turn(roles[i % 2], t) for i, t in enumerate(texts)], Source("mem.jsonl", line=1))


@pytest.mark.parametrize("template_name", ["alpaca", "chatml"])
def test_training_and_generation_start_with_one_bos(sentencepiece_tokenizer, template_name):
    tokenizer = sentencepiece_tokenizer
    assert bos_to_add(tokenizer) == tokenizer.bos_token_id == 1
    template = get_template(template_name, tokenizer)
    sample = encode_conversation(chat("hello world", "the quick fox"), tokenizer, template)
    assert sample["input_ids"][0] == 1 and sample["labels"][0] == -100  # a prompt token, never trained
    assert list(sample["input_ids"]).count(1) == 1
    prompt = encode_prompts([chat("hello world")], tokenizer, template, TokenizeOptions())[0]
    assert prompt[0] == 1 and list(prompt).count(1) == 1
    # the prompt part of training equals the generation prompt, token for token
    assert list(sample["input_ids"][: len(prompt)]) == list(prompt)
    # the text after BOS encodes as the tokenizer's own call would (an id, not "<s>" text, is put in front)
    text = "".join(s.text for s in template.render(chat("hello world"), True))
    assert list(prompt) == tokenizer(text)["input_ids"]


def test_a_template_that_writes_bos_gets_no_second_one(sentencepiece_tokenizer):
    template = get_template("llama2", sentencepiece_tokenizer)
    dataset = tokenize_conversations(
        [chat("hello", "world"), chat("a", "b", "c", "d")], sentencepiece_tokenizer, template
    )
    for i in range(len(dataset)):
        ids = list(dataset[i]["input_ids"])
        assert ids[0] == 1 and ids[1] != 1


def test_a_tokenizer_without_its_own_bos_gets_none(default_tokenizer):
    template = get_template("chatml", default_tokenizer)
    assert bos_to_add(default_tokenizer) is None
    sample = encode_conversation(chat("hello", "world"), default_tokenizer, template)
    segments = template.render(chat("hello", "world"), False)
    pieces = [default_tokenizer(s.text, add_special_tokens=False)["input_ids"] for s in segments]
    assert list(sample["input_ids"]) == [token for piece in pieces for token in piece]  # nothing put in front


@pytest.mark.parametrize("template_name", ["alpaca", "chatml", "llama2"])
def test_the_exported_chat_template_writes_the_bos_once(sentencepiece_tokenizer, template_name):
    from tunellm.infer.parity import render_check

    tokenizer = sentencepiece_tokenizer
    template = get_template(template_name, tokenizer)
    tokenizer.chat_template = template.chat_template()
    try:
        messages = [{"role": "user", "content": "hello world"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text.startswith("<s>") and not text.startswith("<s><s>") and text.count("<s>") == 1
        assert render_check(tokenizer, template, chat("hello world")) == "same"
    finally:
        tokenizer.chat_template = None
