"""Checkpoint faults: a full disk mid-write, and damaged checkpoints that `resume: auto` must pass over."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import pytest
from test_loop import TOKENIZER, tiny_lora, toy_rows, train_config

from tunellm.errors import TrainingError
from tunellm.train import fit, optim_state
from tunellm.train.checkpoint import checkpoint_problem, find_resume, list_checkpoints

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    """A run folder holding step-2 and step-4 (read-only: tests copy it)."""
    config = train_config(tmp_path_factory.mktemp("faults"), max_steps=4, save_steps=2, save_total_limit=None)
    fit(tiny_lora(), TOKENIZER, toy_rows(8), None, config, show_progress=False)
    return Path(config.output_dir)


def copy_run(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "run"))


def test_a_full_disk_keeps_the_previous_checkpoint_reports_and_the_next_run_resumes(tmp_path, caplog):
    real, calls = optim_state.write_optimizer, []

    def fills_up(folder, state):
        calls.append(folder)
        if len(calls) == 2:  # the second checkpoint, step-4
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "optimizer.safetensors"))
        real(folder, state)

    config = train_config(tmp_path, max_steps=6, save_steps=2, save_total_limit=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(optim_state, "write_optimizer", fills_up)
        with pytest.raises(TrainingError, match="could not write checkpoint step-4: No space left on device") as error:
            fit(tiny_lora(), TOKENIZER, toy_rows(8), None, config, show_progress=False)
    print(f"\ndisk full: {error.value}")
    out = Path(config.output_dir)
    assert "previous checkpoint step-2 is intact" in error.value.hint
    assert [p.name for p in list_checkpoints(out)] == ["step-2"] and checkpoint_problem(out / "step-2") is None
    assert not list(out.glob(".tmp-step-*"))  # the partial write is gone: it gave the space back
    resumed = config.model_copy(update={"resume": "auto"})
    with caplog.at_level(logging.INFO, logger="tunellm"):
        result = fit(tiny_lora(), TOKENIZER, toy_rows(8), None, resumed, show_progress=False)
    assert result.global_step == 6 and any(
        "resuming from" in r.message and "step-2" in r.message for r in caplog.records
    )


@pytest.mark.parametrize("damage", ["truncated weights", "truncated optimizer", "missing state file", "bad json"])
def test_resume_auto_passes_over_a_damaged_checkpoint_with_a_warning(two_checkpoints, tmp_path, caplog, damage):
    out = copy_run(two_checkpoints, tmp_path)
    newest = out / "step-4"
    if damage == "truncated weights":
        weights = newest / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "truncated optimizer":
        (newest / "state" / "optimizer.safetensors").write_bytes(b"\x10\x00")
    elif damage == "missing state file":
        (newest / "state" / "scheduler.json").unlink()
    else:
        (newest / "state" / "trainer_state.json").write_text('{"global_step": 4, "epo')
    with caplog.at_level(logging.WARNING, logger="tunellm.train.checkpoint"):
        assert find_resume(out, "auto", quiet=True) == out / "step-2"  # train's early check: fit warns, once
        assert not caplog.records
        assert find_resume(out, "auto") == out / "step-2"
    warning = next(r.message for r in caplog.records if "skipping checkpoint" in r.message)
    print(f"\n{damage}: {warning}")
    assert str(newest) in warning
    config = train_config(tmp_path, max_steps=4, save_steps=2, resume="auto", save_total_limit=None)
    result = fit(tiny_lora(), TOKENIZER, toy_rows(8), None, config, show_progress=False)
    assert result.global_step == 4 and checkpoint_problem(newest) is None  # redone from step-2 and rewritten
