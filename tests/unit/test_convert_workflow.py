"""A ChatGLM2 checkpoint in its original layout through the whole workflow on its native form: `tunellm model
convert` both ways (weights round-trip exactly), LoRA training, chat, eval, merge and the merged weights written back
in the original layout, and P-Tuning v2. The checkpoint is a tiny random native glm written in the original
layout by the inverse mapping, so these tests need no reference package."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GlmConfig, GlmForCausalLM

from tunellm.cli.main import main
from tunellm.config.schema import ModelConfig
from tunellm.models.convert import chatglm2
from tunellm.models.convert.weights import read_state_dict, write_state_dict
from tunellm.models.load import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RAW = {
    "model_type": "chatglm", "architectures": ["ChatGLMModel"], "num_layers": 2, "padded_vocab_size": 2048,
    "hidden_size": 64, "ffn_hidden_size": 128, "kv_channels": 16, "num_attention_heads": 4, "seq_length": 256,
    "multi_query_attention": True, "multi_query_group_num": 2, "add_qkv_bias": True, "add_bias_linear": False,
    "rmsnorm": True, "post_layer_norm": True, "layernorm_epsilon": 1e-5, "rope_ratio": 1.0, "eos_token_id": 2,
    "pad_token_id": 0, "torch_dtype": "float32",
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                 "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
}  # fmt: skip
ROWS = [{"instruction": f"第{i}题：{i} 加 {i} 等于几？", "output": f"答案是 {2 * i}。"} for i in range(8)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELLM_HOME", str(tmp_path_factory.getbasetemp() / "tunellm_home"))


@pytest.fixture(scope="module")
def original(tmp_path_factory, sentencepiece_folders) -> Path:
    """A ChatGLM2-6B-shaped folder: config.json (chatglm, auto_map), original weight names, tokenizer.model."""
    folder = tmp_path_factory.mktemp("chatglm2_original")
    fields = chatglm2.convert_config(RAW, folder)
    torch.manual_seed(0)
    native = GlmForCausalLM(GlmConfig(**{k: v for k, v in fields.items() if k != "model_type"}))
    write_state_dict(chatglm2.original_weights(native.state_dict(), fields), folder)
    (folder / "config.json").write_text(json.dumps(RAW))
    shutil.copy(sentencepiece_folders["chatglm"] / "tokenizer.model", folder / "tokenizer.model")
    (folder / "modeling_chatglm.py").write_text("# stands for the shipped code; never run\n")
    return folder


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["tunellm", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code or 0, captured.out, captured.err


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(3, 2000, (2, 11), generator=torch.Generator().manual_seed(0))


def test_convert_both_ways_round_trips_the_weights(original, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "native"
    status, stdout, stderr = run_cli(monkeypatch, capsys, "model", "convert", str(original), "-o", str(out))
    assert status == 0, stderr
    assert json.loads((out / "config.json").read_text())["model_type"] == "glm"
    assert {"model.safetensors", "tokenizer.json", "original"} <= {p.name for p in out.iterdir()}
    plain = AutoModelForCausalLM.from_pretrained(out)  # a plain transformers folder
    loaded, _, _ = load_model(ModelConfig(name_or_path=str(original)), device="cpu")
    torch.testing.assert_close(logits(plain, IDS), logits(loaded, IDS), atol=0, rtol=0)

    back = tmp_path / "back"
    status, _, stderr = run_cli(monkeypatch, capsys, "model", "convert", str(out), "--to-original", "-o", str(back))
    assert status == 0, stderr
    source, written = read_state_dict(original), read_state_dict(back)
    assert source.keys() == written.keys() and all(torch.equal(source[k], written[k]) for k in source)
    assert json.loads((back / "config.json").read_text()) == RAW
    assert (back / "tokenizer.model").read_bytes() == (original / "tokenizer.model").read_bytes()
    assert (back / "modeling_chatglm.py").is_file()
    status, _, stderr = run_cli(monkeypatch, capsys, "model", "convert", str(out), "-o", str(tmp_path / "x"))
    assert status == 2 and "no native conversion" in stderr


def test_lora_train_chat_merge_and_back_to_the_original_layout(original, tmp_path, monkeypatch, capsys) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    run = tmp_path / "run"
    status, stdout, stderr = run_cli(
        monkeypatch, capsys, "train", "--data", str(data), "--output", str(run), "--model", str(original),
        "max_steps=2", "save_steps=2", "dev_split=0", "method.r=4", "method.lora_alpha=64", "learning_rate=0.05",
        f"cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert status == 0, stderr[-3000:]
    step = run / "step-2"
    saved = (step / "config.yaml").read_text()
    assert "template: chatglm2" in saved and "trust_remote_code: false" in saved
    adapter = json.loads((step / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"}

    status, stdout, stderr = run_cli(monkeypatch, capsys, "chat", "--adapter", str(step), "--prompt", "你好",
                                     "--max-new-tokens", "4")  # fmt: skip
    # a random tiny model's 4 tokens may decode to blanks (seen after the generate: section landed: to check)
    assert status == 0 and stdout, stderr

    scores = tmp_path / "eval"
    status, _, stderr = run_cli(monkeypatch, capsys, "eval", str(data), "--adapter", str(step), "--max-new-tokens",
                                "3", "--max-rows", "4", "--no-progress", "-o", str(scores))  # fmt: skip
    assert status == 0, stderr[-3000:]
    assert json.loads((scores / "metrics.json").read_text())["overall"]["loss"] > 0

    merged = tmp_path / "merged"
    status, _, stderr = run_cli(monkeypatch, capsys, "merge", str(step), "-o", str(merged))
    assert status == 0 and "parity holds" in stderr, stderr[-3000:]
    back = tmp_path / "merged_original"
    status, _, stderr = run_cli(monkeypatch, capsys, "model", "convert", str(merged), "--to-original", "-o", str(back))
    assert status == 0, stderr
    assert json.loads((back / "config.json").read_text())["model_type"] == "chatglm"
    weights = read_state_dict(back)
    assert "transformer.encoder.layers.0.self_attention.query_key_value.weight" in weights
    base = read_state_dict(original)
    assert not torch.equal(weights["transformer.encoder.layers.0.self_attention.dense.weight"],
                           base["transformer.encoder.layers.0.self_attention.dense.weight"])  # fmt: skip
    merged_model = AutoModelForCausalLM.from_pretrained(merged)
    again, _, _ = load_model(ModelConfig(name_or_path=str(back)), device="cpu")  # the original layout, reloaded
    torch.testing.assert_close(logits(again, IDS), logits(merged_model, IDS), atol=1e-5, rtol=0)


def test_ptuning_v2_trains_on_the_native_form(original, tmp_path, monkeypatch, capsys) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    run = tmp_path / "run"
    status, _, stderr = run_cli(
        monkeypatch, capsys, "train", "--data", str(data), "--output", str(run), "--model", str(original),
        "method=ptuning_v2", "method.pre_seq_len=4", "max_steps=2", "save_steps=2", "dev_split=0",
        "gradient_checkpointing=false", f"cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert status == 0, stderr[-3000:]
    assert (run / "step-2" / "adapter_model.safetensors").is_file()
    status, stdout, stderr = run_cli(monkeypatch, capsys, "chat", "--adapter", str(run / "step-2"), "--prompt", "你好",
                                     "--max-new-tokens", "3")  # fmt: skip
    assert status == 0, stderr


@pytest.fixture(scope="module")
def original_v1(tmp_path_factory, ice_text_folder) -> Path:
    """A ChatGLM-6B-shaped folder: config.json (chatglm, position_encoding_2d), original names, ice_text.model;
    the special token ids in the config are the tokenizer's."""
    from tunellm.models.chatglm6b import ChatGLM6BConfig, ChatGLM6BForCausalLM
    from tunellm.models.convert import chatglm6b
    from tunellm.models.convert.tokenizers import fast_from_ice_text

    folder = tmp_path_factory.mktemp("chatglm6b_original")
    shutil.copy(ice_text_folder / "ice_text.model", folder / "ice_text.model")
    tokenizer = fast_from_ice_text(folder)
    ids = dict(zip(("mask", "gmask", "bos", "eos", "pad"), tokenizer.convert_tokens_to_ids(
        ["[MASK]", "[gMASK]", "<sop>", "<eop>", "<pad>"]), strict=True))  # fmt: skip
    raw = {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"], "position_encoding_2d": True,
        "vocab_size": len(tokenizer) + 16, "hidden_size": 64, "num_layers": 2, "num_attention_heads": 4,
        "inner_hidden_size": 128, "layernorm_epsilon": 1e-5, "max_sequence_length": 256, "torch_dtype": "float32",
        "mask_token_id": ids["mask"], "gmask_token_id": ids["gmask"], "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
    }  # fmt: skip
    fields = chatglm6b.convert_config(raw, folder)
    torch.manual_seed(0)
    native = ChatGLM6BForCausalLM(ChatGLM6BConfig(**{k: v for k, v in fields.items() if k != "model_type"}))
    write_state_dict(chatglm6b.original_weights(native.state_dict(), fields), folder)
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def test_chatglm6b_trains_chats_merges_and_ptunes(original_v1, tmp_path, monkeypatch, capsys) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    common = ["--data", str(data), "--model", str(original_v1), "max_steps=2", "save_steps=2", "dev_split=0"]
    status, _, stderr = run_cli(monkeypatch, capsys, "train", *common, "--output", str(tmp_path / "lora"),
                                "method.r=4", f"cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert status == 0, stderr[-3000:]
    step = tmp_path / "lora" / "step-2"
    assert "template: chatglm\n" in (step / "config.yaml").read_text()
    status, stdout, stderr = run_cli(monkeypatch, capsys, "chat", "--adapter", str(step), "--prompt", "你好",
                                     "--max-new-tokens", "4")  # fmt: skip
    assert status == 0, stderr
    merged = tmp_path / "merged"
    status, _, stderr = run_cli(monkeypatch, capsys, "merge", str(step), "-o", str(merged))
    assert status == 0 and "parity holds" in stderr, stderr[-3000:]
    status, _, stderr = run_cli(monkeypatch, capsys, "train", *common, "--output", str(tmp_path / "pt"),
                                "method=ptuning_v2", "method.pre_seq_len=4", "gradient_checkpointing=false",
                                f"cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert status == 0, stderr[-3000:]
    assert (tmp_path / "pt" / "step-2" / "adapter_model.safetensors").is_file()
