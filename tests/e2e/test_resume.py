"""SIGKILL a training run, once at a random step and once while it writes a checkpoint, then resume it:
the final adapter and every logged loss equal those of an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tunellm.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
HELPER = [sys.executable, "-m", "tests.e2e.resume_run"]
TIME_KEYS = ("tokens_per_s", "elapsed")


def start(output_dir: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*HELPER, str(output_dir), *options], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


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


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]


def comparable(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIME_KEYS} for e in entries]


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_result(tmp_path):
    seed = random.randrange(1 << 30)
    kill_at = random.Random(seed).randint(2, 27)
    note = f"(kill at step {kill_at}, seed {seed})"
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference = start(whole)  # runs beside the interrupted one: 2 processes of 1 thread each

    killed = start(cut, "--step-delay", "0.05")
    kill_when(killed, lambda: any(e["step"] >= kill_at for e in logged(cut)), f"step {kill_at} {note}")
    assert not (cut / "step-30").exists(), note
    done = [int(p.name.removeprefix("step-")) for p in list_checkpoints(cut)]
    hang_at = (max(done, default=0) // 5 + 1) * 5

    marker = tmp_path / "hanging"
    hanging = start(cut, "--hang-in-save", str(hang_at), "--marker", str(marker))
    kill_when(hanging, marker.exists, f"the write of step-{hang_at} {note}")
    assert (cut / f".tmp-step-{hang_at}").is_dir(), note
    assert not (cut / f"step-{hang_at}").exists(), note

    finish(start(cut))
    finish(reference)
    assert not list(cut.glob(".tmp-*")), note
    assert [p.name for p in list_checkpoints(cut)] == [p.name for p in list_checkpoints(whole)], note
    expected = load_file(whole / "step-30" / "adapter_model.safetensors")
    got = load_file(cut / "step-30" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=f"{name} {note}")
    assert comparable(logged(cut)) == comparable(logged(whole)), note
    assert len(logged(whole)) == 30 + 3
    assert json.loads((cut / "best.json").read_text()) == json.loads((whole / "best.json").read_text()), note
