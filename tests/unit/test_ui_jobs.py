"""Train and Evaluate pages: the commands they run, detached jobs (outlive the page, stop, resume), live run views."""

import json
import sys
import time

import pytest

from tunellm.errors import ConfigError
from tunellm.ui import evaluate, jobs, train
from tunellm.ui.train import TrainForm


def wait_until(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def root(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.json").write_text('[{"instruction": "q", "input": "", "output": "a"}]')
    return tmp_path


def test_the_train_command_is_tunellm_train_with_the_forms_keys(root):
    form = TrainForm(["data/a.json"], dev=["data/a.json"], method="lora", run="r1", max_steps=4, cutoff_len=64)
    form.extra = "train.logging_steps=1\n\ndata.template=chatml"
    folder, command = train.train_command(form, root, root / "runs")
    assert folder == (root / "runs" / "r1").resolve()
    assert command[:4] == [sys.executable, "-m", "tunellm", "train"]
    assert command[command.index("--data") + 1] == str((root / "data" / "a.json").resolve())
    assert command[command.index("--output") + 1] == str(folder)
    assert {"method.name=lora", "train.max_steps=4", "data.cutoff_len=64", "method.r=8"} <= set(command)
    assert command[-2:] == ["train.logging_steps=1", "data.template=chatml"]
    assert train.total_steps(command) == 4
    (root / "models" / "tiny").mkdir(parents=True)
    for model, passed in (("models/tiny", str((root / "models" / "tiny").resolve())), ("org/hub-name", "org/hub-name")):
        form.model = model
        command = train.train_command(form, root, root / "runs")[1]
        assert command[command.index("--model") + 1] == passed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": ["../secret.json"]}, "outside"),
        ({"train": ["/etc/passwd"]}, "outside"),
        ({"run": "../../elsewhere"}, "outside"),
        ({"train": []}, "at least one"),
        ({"extra": "no equals sign"}, "key=value"),
        ({"method": "lorax"}, "unknown method"),
        ({"model": "/opt/models/secret"}, "outside"),
        ({"model": "../models/x"}, "outside"),
    ],
)
def test_bad_train_forms_are_refused(root, change, message):
    form = TrainForm(["data/a.json"], run="r1") if "train" not in change else TrainForm(change["train"])
    for key, value in change.items():
        setattr(form, key, value)
    with pytest.raises(ConfigError, match=message):
        train.train_command(form, root, root / "runs")


def test_the_eval_command_compares_the_run_with_its_base(root):
    folder, command = evaluate.eval_command("data/a.json", "r1", root, root / "runs", max_rows=5, max_new_tokens=16)
    assert folder == (root / "runs" / "r1" / "ui-eval").resolve()
    assert command[3:5] == ["eval", str((root / "data" / "a.json").resolve())]
    assert {"--compare", "--no-progress"} <= set(command)
    assert command[command.index("--adapter") + 1] == str((root / "runs" / "r1").resolve())
    assert command[command.index("--max-rows") + 1] == "5"
    with pytest.raises(ConfigError, match="outside"):
        evaluate.eval_command("../x.json", "r1", root, root / "runs")


def test_a_job_outlives_its_starter_stops_and_is_read_back(tmp_path):
    folder = tmp_path / "job"
    script = "import time\nprint('working', flush=True)\ntime.sleep(60)"
    jobs.start(folder, [sys.executable, "-c", script])
    assert jobs.read(folder).running
    with pytest.raises(RuntimeError, match="already running"):
        jobs.start(folder, [sys.executable, "-c", "pass"])
    started = dict(jobs._children)
    jobs._children.clear()  # as a page served by a new process sees it: from the files alone
    try:
        assert jobs.read(folder).running
        assert wait_until(lambda: "working" in jobs.log_tail(folder))
        assert jobs.stop(folder, grace=5).state == "stopped"
    finally:
        jobs._children.update(started)
    assert not jobs.read(folder).running


def test_a_job_that_ends_by_itself_reports_its_exit_status(tmp_path):
    jobs.start(tmp_path / "ok", [sys.executable, "-c", "print('done')"])
    jobs.start(tmp_path / "bad", [sys.executable, "-c", "raise SystemExit(3)"])
    assert wait_until(lambda: not jobs.read(tmp_path / "ok").running and not jobs.read(tmp_path / "bad").running)
    assert jobs.read(tmp_path / "ok").state == "finished"
    assert (jobs.read(tmp_path / "bad").state, jobs.read(tmp_path / "bad").rc) == ("failed", 3)
    assert jobs.read(tmp_path / "none").state == "none"


def test_the_run_view_follows_train_log_jsonl(tmp_path):
    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True)
    entries = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7, "eval_accuracy": 0.5}]
    (folder / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"step": 3, "lo')
    view = train.view(folder)
    assert view.step == 2 and view.state == "no job" and view.adapter is None
    assert [(p["step"], p["series"]) for p in view.losses] == [(1, "train loss"), (2, "train loss"), (2, "eval loss")]
    assert view.evals == [entries[2]]
    assert train.list_runs(tmp_path / "runs") == ["r1"]


def test_resume_reruns_the_same_command(tmp_path):
    folder = tmp_path / "run"
    marker = tmp_path / "count"
    script = f"import pathlib; p = pathlib.Path({str(marker)!r}); p.write_text(str(int(p.read_text() or 0) + 1))"
    marker.write_text("")
    jobs.start(folder, [sys.executable, "-c", script])
    assert wait_until(lambda: jobs.read(folder).state == "finished")
    train.resume(folder)
    assert wait_until(lambda: jobs.read(folder).state == "finished" and marker.read_text() == "2")


@pytest.mark.slow  # a `tunellm eval` subprocess: about 15 s on an idle 2-core machine
def test_the_evaluate_page_runs_tunellm_eval_compare_and_shows_its_table_and_chart(root, tiny_lora_checkpoint):
    import shutil

    runs = root / "runs"
    shutil.copytree(tiny_lora_checkpoint, runs / "run" / "step-2")
    rows = [
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Say yo", "input": "", "output": "yo"},
    ]
    (root / "data" / "eval.json").write_text(json.dumps(rows))
    folder = evaluate.start("data/eval.json", "run", root, runs, max_rows=2, max_new_tokens=4)
    assert wait_until(lambda: not jobs.read(folder).running, timeout=240)
    view = evaluate.view(folder)
    assert view.state == "finished", view.log
    assert "base" in view.table and view.chart is not None and view.chart.stat().st_size > 0


def test_stop_reaches_a_job_that_ignores_sigint(tmp_path):
    # a page started as a script's background job passes an ignored SIGINT on to its jobs (seen in CI: the run
    # went on to its last step); stop must end the job's own process, not only the shell around it
    folder, pid_file = tmp_path / "job", tmp_path / "job.pid"
    script = (
        "import os, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"
    )
    jobs.start(folder, [sys.executable, "-c", script])
    assert wait_until(lambda: pid_file.is_file() and pid_file.read_text())
    started = time.monotonic()
    assert jobs.stop(folder, grace=30).state == "stopped"
    assert time.monotonic() - started < 10  # by the first signal, not the SIGKILL after the grace
    assert wait_until(lambda: not jobs._alive(int(pid_file.read_text())), timeout=5)
