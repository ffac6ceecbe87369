"""A `tunellm merge` killed (SIGKILL) before its rename leaves no output, and the next merge sweeps its staging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunellm.infer.merge import MergeOptions, merge_checkpoint, sweep_stale

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KILLED_MERGE = """
import os, signal, sys
from pathlib import Path

import pytest
from tunellm.infer import merge
def killed(staging, output):
    print(f"staged {staging}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
merge.move_into_place = killed
merge.merge_checkpoint(sys.argv[1], merge.MergeOptions(Path(sys.argv[2]), prompts=1))
"""


def test_a_killed_merge_leaves_no_output_and_the_next_run_sweeps_its_temp_folder(tiny_lora_checkpoint, tmp_path):
    out = tmp_path / "merged"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_MERGE, str(tiny_lora_checkpoint), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr
    staged = list(tmp_path.glob(".merged.merging-*"))
    print(f"\nkilled merge: exit {done.returncode}, output exists: {out.exists()}, left: {[p.name for p in staged]}")
    assert not out.exists() and len(staged) == 1 and (staged[0] / "model.safetensors").is_file()
    lines: list[str] = []
    result = merge_checkpoint(tiny_lora_checkpoint, MergeOptions(out, prompts=1), say=lines.append)
    assert result.report.passed and (out / "model.safetensors").is_file()
    assert f"removed {staged[0]}, left by a merge that was killed" in lines
    assert not list(tmp_path.glob(".merged.merging-*"))


def test_the_staging_folder_of_a_running_merge_is_left_alone(tmp_path):
    out = tmp_path / "merged"
    alive = tmp_path / f".merged.merging-{os.getppid()}-abc"
    dead = tmp_path / ".merged.merging-99999999-abc"
    other = tmp_path / ".other.merging-99999999-abc"
    for folder in (alive, dead, other):
        folder.mkdir()
    assert sweep_stale(out) == [dead]
    assert alive.is_dir() and other.is_dir()
