"""`tunellm train` as a user runs it: a whole run on a tiny model, and input errors caught before the model loads."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

NO_MODEL = "/nonexistent/model"  # had the model been loaded first, this error would come first


@pytest.fixture
def tunellm(tunellm_command, cli_env):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*tunellm_command, *args], capture_output=True, text=True, env=cli_env, timeout=300)

    return run


def test_a_run_leaves_checkpoints_best_log_and_loss_curve(tunellm, tiny_llama_dir, alpaca_file, tmp_path):
    out = tmp_path / "run"
    done = tunellm(
        "train", "--data", str(alpaca_file), "--output", str(out), "--model", str(tiny_llama_dir),
        "max_steps=4", "save_steps=2", "eval_steps=2", "logging_steps=1", "dev_split=0.25",
        f"cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("step-*")) == ["step-2", "step-4"]
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "eval_loss" and (out / best["checkpoint"]).is_dir()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]
    assert [e["step"] for e in log if "eval_loss" in e] == [2, 4]
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert any((out / "tensorboard").iterdir())
    step = out / "step-4"
    assert (step / "adapter_model.safetensors").is_file() and (step / "tokenizer.json").is_file()
    saved = yaml.safe_load((step / "config.yaml").read_text())
    assert saved["data"]["template"] == "hf_chat"  # the resolved template, for chat and predict
    assert saved["model"]["name_or_path"] == str(tiny_llama_dir)
    assert "read 24 of 24 records" in done.stdout
    assert "6 of 24 samples held out" in done.stdout
    assert f"best checkpoint: {out / best['checkpoint']}" in done.stdout
    assert str(out / "loss_curve.png") in done.stdout


def test_a_bad_key_fails_with_exit_2_before_anything_loads(tunellm, alpaca_file, tmp_path):
    done = tunellm("train", "--data", str(alpaca_file), "--model", NO_MODEL, "max_step=3", "lora_rnak=4")
    assert done.returncode == 2
    assert "2 problem(s)" in done.stderr and "unknown key 'max_step'" in done.stderr
    assert "max_steps" in done.stderr  # did you mean
    assert "Traceback" not in done.stderr and NO_MODEL not in done.stderr


def test_a_missing_data_file_fails_before_the_model_loads(tunellm, tmp_path):
    done = tunellm("train", "--data", str(tmp_path / "missing.jsonl"), "--model", NO_MODEL)
    assert done.returncode == 2
    assert "missing.jsonl: file not found" in done.stderr
    assert NO_MODEL not in done.stderr


def test_an_output_folder_that_cannot_be_made_fails_before_the_model_loads(tunellm, alpaca_file, tmp_path):
    output = alpaca_file / "run"  # under a file
    done = tunellm("train", "--data", str(alpaca_file), "--output", str(output), "--model", NO_MODEL)
    assert done.returncode == 2
    assert "is a file, not a folder" in done.stderr and "train.output_dir" in done.stderr
    assert NO_MODEL not in done.stderr
