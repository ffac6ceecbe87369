"""The Train page's run on the tiny llama: the data check, then start, stop (SIGTERM) and resume to the end,
as the page's buttons do it, with the run read back from its folder alone."""

from __future__ import annotations

import json
import time

import pytest

from tunellm.train.checkpoint import list_checkpoints
from tunellm.ui import jobs, train
from tunellm.ui.train import TrainForm

pytestmark = pytest.mark.slow
STEPS = 12


def wait_until(predicate, timeout=240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_check_start_stop_resume_from_the_train_page(tmp_path, tiny_llama_dir, alpaca_file):
    root, runs = tiny_llama_dir.parent, tmp_path / "runs"  # the root holds the data and the model (pytest's tmp)
    data = str(alpaca_file.relative_to(root))
    form = TrainForm([data], model=str(tiny_llama_dir), run="page-run", max_steps=STEPS, batch_size=2)
    form.cutoff_len, form.eval_steps = 64, 4
    form.extra = "train.logging_steps=1\ntrain.report_to=none\ntrain.learning_rate=1e-3"
    stats = train.data_stats(form, root, tmp_path / "lengths.png")
    assert stats["rows"] == 24 and (tmp_path / "lengths.png").is_file()

    folder, state = train.start(form, root, runs)
    assert state.running and train.list_runs(runs) == ["page-run"]
    assert wait_until(lambda: len(list_checkpoints(folder)) >= 1), jobs.log_tail(folder)
    stopped = jobs.stop(folder)
    assert stopped.state == "stopped", jobs.log_tail(folder)
    view = train.view(folder)
    assert view.state == "stopped" and 0 < view.step < STEPS and view.total == STEPS
    assert view.adapter is not None  # the last checkpoint is usable right away

    jobs._children.clear()  # a page served by a new process resumes from the run folder alone
    train.resume(folder)
    assert wait_until(lambda: not jobs.read(folder).running), jobs.log_tail(folder)
    view = train.view(folder)
    assert view.state == "finished", view.log
    assert view.step == STEPS and view.adapter is not None
    assert "resuming from" in jobs.log_tail(folder, 200)
    losses = [e for e in map(json.loads, (folder / "train_log.jsonl").read_text().splitlines()) if "loss" in e]
    # the log is rewritten from the checkpoint's history
    assert [e["step"] for e in losses] == list(range(1, STEPS + 1))
