"""`tunellm doctor` and `tunellm train`'s refusal as a user runs them: lines or JSON, exit codes, --gpu."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml


@pytest.fixture
def tunellm(tunellm_command, cli_env):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*tunellm_command, *args], capture_output=True, text=True, env=cli_env, timeout=300)

    return run


def test_doctor_json_for_a_named_gpu(tunellm, tiny_llama_dir, alpaca_file, tmp_path):
    done = tunellm("doctor", "--data", str(alpaca_file), "--model", str(tiny_llama_dir), "--gpu", "A100-40GB",
                   "--json", "--only", "memory", "--only", "template", "per_device_train_batch_size=8",
                   f"cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert report["ok"] is True and checks["memory.peak"]["status"] == "pass"
    assert not any(name.startswith("data.") for name in checks)  # --only
    assert checks["memory.peak"]["data"]["hardware"]["name"] == "A100-40GB"
    assert checks["memory.peak"]["data"]["parts_gib"]["weights"] > 0
    assert "s per optimizer step on A100-40GB" in checks["memory.time"]["message"]
    assert checks["template.eos"]["data"]["end_id"] == 2


def test_doctor_lines_and_exit_1_on_bad_data(tunellm, tiny_llama_dir, alpaca_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(alpaca_file.read_text() + '{"instruction": 3}\n', encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_llama_dir)}, "data": {"train": [str(bad)]}}))
    done = tunellm("doctor", str(config), f"cache_dir={tmp_path / 'cache'}")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "FAIL data.bad_rows" in done.stdout and f"{bad}, line 25" in done.stdout
    assert "PASS memory.peak" in done.stdout and "PASS template.eos" in done.stdout


def test_doctor_unknown_gpu_is_a_clean_error(tunellm, alpaca_file):
    done = tunellm("doctor", "--data", str(alpaca_file), "--gpu", "H100-80G")
    assert done.returncode == 2 and "did you mean 'H100-80GB'" in done.stderr


def test_train_refuses_an_end_of_turn_the_model_cannot_generate(tunellm, tiny_llama_dir, alpaca_file, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "added-eos"
    shutil.copytree(tiny_llama_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"eos_token": "<|stop|>"})
    tokenizer.save_pretrained(folder)
    done = tunellm("train", "--data", str(alpaca_file), "--model", str(folder), "--output", str(tmp_path / "run"),
                   "template=alpaca", "max_steps=1", f"cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert done.returncode == 2
    assert "refusing to train" in done.stderr and "can never be generated" in done.stderr and "--force" in done.stderr
    assert not (tmp_path / "run" / "step-1").exists()
