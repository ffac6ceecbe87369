"""SIGKILL `tunellm train`, once at a random step and once while it writes a checkpoint, then run the same command
again: the final adapter, every logged loss and best.json equal those of an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunellm.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
HOOKED = [sys.executable, "-m", "tests.e2e.hooked_cli"]  # `tunellm` that can be held at a chosen moment
TIME_KEYS = ("tokens_per_s", "elapsed")
STEPS = 30
# dropout on (RNG restore matters), accumulation over rows of different lengths, epochs of 5 steps, dev_split
OPTIONS = [
    f"max_steps={STEPS}", "save_steps=5", "eval_steps=10", "logging_steps=1", "save_total_limit=2",
    "per_device_train_batch_size=2", "gradient_accumulation_steps=2", "learning_rate=5e-3", "warmup_ratio=0.1",
    "weight_decay=0.01", "lora_dropout=0.2", "r=4", "target_modules=[q_proj, v_proj]", "dev_split=0.2",
    "report_to=none",
]  # fmt: skip


def logged(output_dir: Path) -> list[dict]:
    path = output_dir / "train_log.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return entries


def kill_when(process: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert process.poll() is None, f"the run ended before {what}: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def finish(process: subprocess.Popen) -> str:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return err


def comparable(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIME_KEYS} for e in entries]


@pytest.mark.slow
def test_sigkill_anywhere_then_the_same_command_gives_the_uninterrupted_result(
    tunellm_command, cli_env, tiny_llama_dir, alpaca_file, tmp_path
):
    seed = random.randrange(1 << 30)
    kill_at = random.Random(seed).randint(2, STEPS - 3)
    note = f"(kill at step {kill_at}, seed {seed})"
    whole, cut = tmp_path / "whole", tmp_path / "cut"

    def start(command: list[str], output_dir: Path, **hooks: str) -> subprocess.Popen:
        args = ["train", "--data", str(alpaca_file), "--model", str(tiny_llama_dir), "--output", str(output_dir)]
        args += [*OPTIONS, f"cache_dir={tmp_path / 'cache'}"]
        env = {**cli_env, **{f"TUNELLM_TEST_{key.upper()}": value for key, value in hooks.items()}}
        pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
        return subprocess.Popen([*command, *args], cwd=ROOT, env=env, **pipes)

    reference = start(tunellm_command, whole)  # runs beside the interrupted one: 2 processes of 1 thread each

    killed = start(HOOKED, cut, step_delay="0.05")
    kill_when(killed, lambda: any(e["step"] >= kill_at for e in logged(cut)), f"step {kill_at} {note}")
    assert not (cut / f"step-{STEPS}").exists(), note
    done = [int(p.name.removeprefix("step-")) for p in list_checkpoints(cut)]
    hang_at = (max(done, default=0) // 5 + 1) * 5

    marker = tmp_path / "hanging"
    hanging = start(HOOKED, cut, hang_in_save=str(hang_at), marker=str(marker))
    kill_when(hanging, marker.exists, f"the write of step-{hang_at} {note}")
    assert (cut / f".tmp-step-{hang_at}").is_dir(), note
    assert not (cut / f"step-{hang_at}").exists(), note

    resumed = finish(start(tunellm_command, cut))
    finish(reference)
    assert f"removed {cut / f'.tmp-step-{hang_at}'}" in resumed, note  # it says what it did
    if hang_at > 5:
        assert f"resuming from {cut / f'step-{hang_at - 5}'}" in resumed, note
    assert not list(cut.glob(".tmp-*")), note
    assert [p.name for p in list_checkpoints(cut)] == [p.name for p in list_checkpoints(whole)], note
    expected = load_file(whole / f"step-{STEPS}" / "adapter_model.safetensors")
    got = load_file(cut / f"step-{STEPS}" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=f"{name} {note}")
    assert comparable(logged(cut)) == comparable(logged(whole)), note
    assert len(logged(whole)) == STEPS + 3
    assert json.loads((cut / "best.json").read_text()) == json.loads((whole / "best.json").read_text()), note
