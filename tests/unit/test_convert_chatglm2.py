"""ChatGLM2/3 load natively (transformers' `glm`), checked against a reference we did not write: modelscope's
ChatGLM2 implementation. Tiny random reference models are saved in the original layout and file names
(config.json with model_type chatglm and auto_map, sharded pytorch_model-*.bin with the original weight names,
tokenizer.model, the modeling file) and loaded through tunellm's normal path without trust_remote_code.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tunellm.config.schema import ModelConfig
from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import TEMPLATES
from tunellm.data.tokenize import encode_conversation
from tunellm.errors import ModelError
from tunellm.models.convert import native
from tunellm.models.load import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 2008  # the tiny SentencePiece vocabulary (at most 2000) plus ChatGLM2's five special tokens, padded
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    """modelscope's ChatGLM2 modules (skipped where modelscope or its dependencies cannot be imported)."""
    try:
        from modelscope.models.nlp.chatglm2 import configuration, text_generation, tokenization
    except ImportError as error:
        pytest.skip(f"modelscope's ChatGLM2 reference cannot be imported: {error}")
    return configuration, text_generation, tokenization


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELLM_HOME", str(tmp_path_factory.getbasetemp() / "tunellm_home"))


def build_reference(reference, rope_ratio: float = 1.0, seed: int = 0):
    configuration, text_generation, _ = reference
    config = configuration.ChatGLM2Config(
        num_layers=2, padded_vocab_size=VOCAB, hidden_size=64, ffn_hidden_size=128, kv_channels=16,
        num_attention_heads=4, seq_length=256, multi_query_attention=True, multi_query_group_num=2,
        add_qkv_bias=True, rope_ratio=rope_ratio, torch_dtype=torch.float32,
    )  # fmt: skip
    config.max_length, config.original_rope, config.use_cache = 256, True, False  # read by the reference
    torch.manual_seed(seed)
    model = text_generation.ChatGLM2ForConditionalGeneration(config)
    with torch.no_grad():  # the reference skips initialisation (empty_init)
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * 0.1 + (1.0 if "layernorm" in name else 0.0))
        rotary = model.transformer.rotary_pos_emb.inv_freq
        rotary.copy_(1.0 / (10000 ** (torch.arange(0, 2 * len(rotary), 2).float() / (2 * len(rotary)))))
    return model.eval(), config


def save_original(model, config, folder: Path, tokenizer_model: Path, modeling_file: str) -> None:
    """The released checkpoints' layout: two .bin shards with an index, config with auto_map, code, tokenizer."""
    folder.mkdir(parents=True)
    raw = {k: v for k, v in config.to_dict().items() if k not in {"id2label", "label2id", "max_length"}}
    raw.update(
        model_type="chatglm", architectures=["ChatGLMModel"], torch_dtype="float32", eos_token_id=2, pad_token_id=0,
        auto_map={
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
    )  # fmt: skip
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    state = model.state_dict()
    names = list(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[:9], "pytorch_model-00002-of-00002.bin": names[9:]}
    for file_name, part in halves.items():
        torch.save({name: state[name] for name in part}, folder / file_name)
    index = {name: file_name for file_name, part in halves.items() for name in part}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    shutil.copy(modeling_file, folder / "modeling_chatglm.py")  # read as text only, never imported
    shutil.copy(tokenizer_model, folder / "tokenizer.model")
    tokenizer_config = {
        "tokenizer_class": "ChatGLMTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        "padding_side": "left",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


def scale_base_instead(reference_model, folder: Path, ratio: float) -> None:
    """ChatGLM3-32k and GLM-4 multiply the rotary base by rope_ratio where ChatGLM2-32k divides the positions:
    the reference computes that variant with its base raised and its ratio at 1, and the checkpoint's code
    file says so as the released ChatGLM3 code does."""
    rotary = reference_model.transformer.rotary_pos_emb
    rotary.rope_ratio = 1.0

    def forward(max_seq_len: int, offset: int = 0):
        return type(rotary).forward_impl(
            rotary, max_seq_len, rotary.dim, dtype=rotary.inv_freq.dtype, device=rotary.inv_freq.device,
            base=10000 * ratio,
        )  # fmt: skip

    rotary.forward = forward
    code = (folder / "modeling_chatglm.py").read_text()
    (folder / "modeling_chatglm.py").write_text(
        code.replace("/ self.rope_ratio", "") + "\nbase = base * self.rope_ratio\n"
    )


@pytest.fixture(scope="module")
def checkpoints(reference, sentencepiece_folders, tmp_path_factory):
    """{variant: (reference model, original-layout folder)}: ChatGLM2-6B (rope_ratio 1), ChatGLM2-6B-32k (16,
    positions divided) and a ChatGLM3-32k-style model (50, base multiplied)."""
    root = tmp_path_factory.mktemp("chatglm2")
    made = {}
    for variant, ratio in (("plain", 1.0), ("32k", 16.0), ("chatglm3-32k", 50.0)):
        model, config = build_reference(reference, ratio)
        folder = root / variant
        save_original(
            model, config, folder, sentencepiece_folders["chatglm"] / "tokenizer.model", reference[1].__file__
        )
        if variant == "chatglm3-32k":
            scale_base_instead(model, folder, ratio)
        made[variant] = (model, folder)
    return made


def native_model(folder: Path):
    return load_model(ModelConfig(name_or_path=str(folder)), device="cpu")


def reference_ids(slow, text: str) -> list[int]:
    """The reference tokenizer's ids for text in which special tokens are written by name."""
    ids = []
    for chunk in re.split(r"(\[gMASK\]|sop|</s>)", text):
        if chunk in {"[gMASK]", "sop"}:
            ids.append(slow.get_command(chunk))
        elif chunk == "</s>":
            ids.append(slow.eos_token_id)
        elif chunk:
            ids += slow.convert_tokens_to_ids(slow.tokenize(chunk))
    return ids


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("variant", ["plain", "32k", "chatglm3-32k"])
def test_single_prompts_match_the_reference(variant: str, checkpoints) -> None:
    reference_model, folder = checkpoints[variant]
    model, tokenizer, family = native_model(folder)
    assert type(model).__name__ == "GlmForCausalLM" and family.name == "glm"
    rope = {"plain": ("default", 10000.0), "32k": ("linear", 10000.0), "chatglm3-32k": ("default", 500000.0)}
    assert (model.config.rope_parameters["rope_type"], model.config.rope_parameters["rope_theta"]) == rope[variant]
    assert type(model).__module__.startswith("transformers.models.glm")
    shipped = str(folder / "modeling_chatglm.py")  # read for rope_ratio, never imported
    assert not any(getattr(m, "__file__", None) == shipped for m in list(sys.modules.values()))
    assert not any(name.startswith(f"transformers_modules.{folder.name}") for name in sys.modules)
    for length in (1, 7, 90):
        ids = torch.randint(3, 2000, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            expected, got = reference_model(input_ids=ids).logits, model(input_ids=ids).logits
        assert expected.std() > 0.1
        torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_left_padded_batch_matches_the_reference(checkpoints) -> None:
    reference_model, folder = checkpoints["plain"]
    model, tokenizer, _ = native_model(folder)
    texts = ["你好，请介绍一下你自己。", "def add(a, b):\n    return a + b", "Hi"]
    rows = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    ids, mask, positions = left_padded(rows, tokenizer.pad_token_id)
    assert tokenizer.padding_side == "left" and tokenizer(texts, padding=True).input_ids == ids.tolist()
    with torch.no_grad():
        expected = reference_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=TOLERANCE, rtol=0)
    for i, row in enumerate(rows):  # padding changes nothing: each row alone gives the same logits
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([row])).logits[0]
        torch.testing.assert_close(got[i][real[i]], alone, atol=TOLERANCE, rtol=0)


def test_multi_turn_prompt_and_greedy_continuation_match(reference, checkpoints) -> None:
    reference_model, folder = checkpoints["plain"]
    model, tokenizer, family = native_model(folder)
    template_name = family.template_for(tokenizer, model.config)
    assert template_name == "chatglm2"
    conversation = Conversation(
        turns=[Turn("user", "你好"), Turn("assistant", "你好！有什么可以帮你？"), Turn("user", "写一个 Python 函数")],
        source=Source("test"),
    )
    template = TEMPLATES.get(template_name)(tokenizer)
    ids = encode_conversation(conversation, tokenizer, template, for_generation=True)["input_ids"].tolist()
    # the same text as the reference's own prompt (prefix tokens, then build_prompt), and, segment by segment,
    # the same ids as the reference tokenizer (it takes special tokens by name, not from text)
    slow = reference[2].ChatGLM2Tokenizer(str(folder / "tokenizer.model"))
    segments = [segment.text for segment in template.render(conversation, for_generation=True)]
    text = slow.build_prompt("写一个 Python 函数", history=[("你好", "你好！有什么可以帮你？")])
    assert "".join(segments).replace("</s>", "") == "[gMASK]sop" + text
    assert ids == [i for segment in segments for i in reference_ids(slow, segment)]
    prompt = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=prompt).logits, reference_model(input_ids=prompt).logits,
                                   atol=TOLERANCE, rtol=0)  # fmt: skip
        expected = prompt
        for _ in range(8):  # greedy decoding with the reference, full forward each step
            step = reference_model(input_ids=expected).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, step], dim=-1)
    model.generation_config.eos_token_id = None  # a random model may well pick EOS; compare all 8 tokens
    got = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    assert got.tolist() == expected.tolist()


def test_conversion_is_cached_and_remote_code_still_optional(checkpoints, monkeypatch) -> None:
    _, folder = checkpoints["plain"]
    first = Path(native.native_location(str(folder), trust_remote_code=False))
    assert first != folder and (first / "config.json").is_file() and (first / "original" / "config.json").is_file()
    monkeypatch.setattr(native, "convert_folder", lambda *a: pytest.fail("converted twice"))
    assert Path(native.native_location(str(folder), trust_remote_code=False)) == first
    assert native.native_location(str(folder), trust_remote_code=True) == str(folder)


def test_rope_ratio_without_the_modeling_file_is_refused(checkpoints, tmp_path: Path) -> None:
    _, folder = checkpoints["32k"]
    copy = tmp_path / "no_code"
    shutil.copytree(folder, copy)
    (copy / "modeling_chatglm.py").unlink()
    with pytest.raises(ModelError, match="rope_ratio"):
        native_model(copy)
