"""The doctor's memory estimate against real runs: short CPU `tunellm train` runs of the default model, each in
its own process, whose peak RSS must be within 25% of the estimate (bench/doctor_memory.py does the runs; its
full table is in bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[2] / "bench" / "doctor_memory.py"


def test_estimated_peak_is_within_25_percent_of_measured_rss(cli_env, tmp_path):
    out = tmp_path / "memory.json"
    configs = "lora,lora_ckpt,full"  # LoRA 4 x 256 fp32 with and without checkpointing, and full fine-tuning
    done = subprocess.run(
        [sys.executable, str(BENCH), "--configs", configs, "--json", str(out)],
        capture_output=True, text=True, env=cli_env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)
    rows = json.loads(out.read_text())
    assert [row["config"] for row in rows] == configs.split(",")
    for row in rows:
        assert abs(row["error"]) <= 0.25, row
    lora, checkpointed = rows[0], rows[1]
    assert checkpointed["measured_gib"] < lora["measured_gib"]  # the runs really differ, so the check means something
