"""What a command changes in its own process: bitsandbytes stays out of commands that quantize nothing (peft would
import it at start-up), and nothing changes in a process the command does not own (tests, Python callers)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from contextlib import contextmanager

import pytest

from tunellm.cli import process

MISSING = object()


@contextmanager
def own_process_without_bitsandbytes_loaded(monkeypatch):
    monkeypatch.setattr(process, "_owned", True)
    saved = sys.modules.pop("bitsandbytes", MISSING)
    try:
        yield
    finally:
        sys.modules.pop("bitsandbytes", None)
        if saved is not MISSING:
            sys.modules["bitsandbytes"] = saved


@pytest.mark.parametrize("method", ["lora", "ptuning_v2", "freeze", "full"])
def test_training_with_a_method_that_does_not_quantize_blocks_bitsandbytes(monkeypatch, method):
    with own_process_without_bitsandbytes_loaded(monkeypatch):
        process.for_training(method)
        assert sys.modules["bitsandbytes"] is None
        assert importlib.util.find_spec("bitsandbytes") is None  # how peft and transformers ask


def test_qlora_training_keeps_bitsandbytes(monkeypatch):
    with own_process_without_bitsandbytes_loaded(monkeypatch):
        process.for_training("qlora")
        assert "bitsandbytes" not in sys.modules


def test_inference_blocks_bitsandbytes(monkeypatch):
    with own_process_without_bitsandbytes_loaded(monkeypatch):
        process.for_inference()
        assert sys.modules["bitsandbytes"] is None


def test_a_process_the_command_does_not_own_is_left_alone(monkeypatch):
    monkeypatch.setattr(process, "_owned", False)
    before = sys.modules.get("bitsandbytes", MISSING)
    process.for_inference()
    process.for_training("lora")
    assert sys.modules.get("bitsandbytes", MISSING) is before


def test_peft_adds_and_runs_lora_with_bitsandbytes_blocked():
    """In a fresh process as `tunellm chat` runs: peft imports, wraps a model in LoRA and runs it, and bitsandbytes
    never loads (peft/helpers.py imports it whenever it is installed)."""
    code = """
import sys
from tunellm.cli import process
process.own_process()
process.for_inference()
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=2)
model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)
assert sys.modules["bitsandbytes"] is None, sys.modules["bitsandbytes"]
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
