"""`tunellm merge` as a user runs it on the embedded default model: train 2 LoRA steps, merge, and chat with the
merged folder as a plain model (its own chat template) to the same greedy reply as with the adapter."""

from __future__ import annotations

import json
import subprocess

import pytest
from safetensors import safe_open

from tunellm.models.default import default_model_dir

WEIGHT = "model.layers.0.self_attn.q_proj.weight"  # a LoRA target of the llama family


def tensor(folder, name: str):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        return weights.get_tensor(name)


@pytest.mark.slow
def test_train_merge_then_chat_with_the_merged_folder(tunellm_command, cli_env, alpaca_file, tmp_path):
    def tunellm(*args: str) -> subprocess.Popen:
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        return subprocess.Popen([*tunellm_command, *args], env=cli_env, **pipes)

    def finish(process: subprocess.Popen) -> str:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        return out

    run, merged = tmp_path / "run", tmp_path / "merged"
    finish(
        tunellm(
            "train", "--data", str(alpaca_file), "--output", str(run), "max_steps=2", "save_steps=2",
            "per_device_train_batch_size=2", "learning_rate=1e-3", "report_to=none", f"cache_dir={tmp_path / 'cache'}",
        )
    )  # fmt: skip
    finish(tunellm("merge", str(run), "--output", str(merged), "--prompts", "2"))
    parity = json.loads((merged / "parity.json").read_text())
    assert parity["passed"] and parity["dtype"] == "float32" and parity["max_logit_diff"] < 1e-3
    assert all(row["greedy"] == "same" for row in parity["prompts"])
    assert not (tensor(merged, WEIGHT) == tensor(default_model_dir(), WEIGHT)).all()  # the adapter is in

    question = ["--prompt", "Add the two numbers. 4 and 9", "--max-new-tokens", "12"]
    with_adapter = tunellm("chat", "--adapter", str(run), *question)  # 2 processes of 1 thread on 2 cores
    plain = tunellm("chat", "--model", str(merged), *question)
    expected = finish(with_adapter)
    assert finish(plain) == expected and expected.strip()
