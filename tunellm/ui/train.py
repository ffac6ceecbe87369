"""The Train page: pick data, model, method and main keys, check the data (`tunellm data stats`), start
`tunellm train` as a detached subprocess, watch progress, loss curve and eval scores from train_log.jsonl,
stop it and resume it. The run lives in a folder under --runs, so a reopened page finds it again."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunellm.errors import ConfigError, TunellmError
from tunellm.infer.load import resolve_checkpoint
from tunellm.methods import METHODS
from tunellm.train.log import LOG_FILE
from tunellm.ui import jobs
from tunellm.ui.paths import inside


@dataclass
class TrainForm:
    train: list[str]
    dev: list[str] = field(default_factory=list)
    model: str = ""
    method: str = "lora"
    run: str = ""
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = 0  # 0: by epochs
    batch_size: int = 4
    cutoff_len: int = 512
    lora_r: int = 8
    eval_steps: int = 0  # 0: the config's default
    extra: str = ""  # more key=value, one per line


def overrides(form: TrainForm) -> list[str]:
    keys = [
        f"method.name={form.method}",
        f"train.learning_rate={form.learning_rate}",
        f"train.num_train_epochs={form.epochs}",
        f"train.per_device_train_batch_size={int(form.batch_size)}",
        f"data.cutoff_len={int(form.cutoff_len)}",
    ]
    if int(form.max_steps) > 0:
        keys.append(f"train.max_steps={int(form.max_steps)}")
    if form.method in ("lora", "qlora"):
        keys.append(f"method.r={int(form.lora_r)}")
    if int(form.eval_steps) > 0:
        keys += [f"train.eval_steps={int(form.eval_steps)}", f"train.save_steps={int(form.eval_steps)}"]
    for line in form.extra.splitlines():
        if line.strip():
            if "=" not in line:
                raise ConfigError(
                    f"'{line.strip()}' is not key=value", field="more keys", expected="key=value per line"
                )
            keys.append(line.strip())
    return keys


def model_argument(root: Path, text: str) -> str:
    """A model given as a path must lie under the root (as every file the page touches); a hub name passes."""
    name = text.strip()
    if name.startswith(("/", "~", ".")) or (Path(root) / name).exists():
        return str(inside(root, name))
    return name


def train_command(form: TrainForm, root: Path, runs: Path) -> tuple[Path, list[str]]:
    """The run folder and the `tunellm train` command for the form; data paths must lie under the root."""
    if not form.train:
        raise ConfigError("choose at least one training file", field="data")
    if form.method not in METHODS.names():
        raise ConfigError(f"unknown method {form.method}", field="method", expected=", ".join(METHODS.names()))
    name = form.run.strip() or time.strftime("ui-%Y%m%d-%H%M%S")
    folder = inside(runs, name)
    args = ["train"]
    for path in form.train:
        args += ["--data", str(inside(root, path))]
    for path in form.dev:
        args += ["--dev", str(inside(root, path))]
    args += ["--output", str(folder)]
    if form.model.strip():
        args += ["--model", model_argument(root, form.model)]
    return folder, jobs.tunellm_command(*args, *overrides(form))


def start(form: TrainForm, root: Path, runs: Path) -> tuple[Path, jobs.JobState]:
    folder, command = train_command(form, root, runs)
    return folder, jobs.start(folder, command)


def resume(folder: Path) -> jobs.JobState:
    """Run the same command again: `tunellm train` resumes from the newest checkpoint in its folder."""
    state = jobs.read(folder)
    if not state.command:
        raise TunellmError("this run was not started from the page", file=str(folder))
    return jobs.start(folder, state.command)


def list_runs(runs: Path) -> list[str]:
    """Run folders under `runs` (started here, or holding a train log), newest first."""
    if not runs.is_dir():
        return []
    found = {path.parent for name in (jobs.JOB_FILE, LOG_FILE) for path in runs.rglob(name)}
    return [str(path.relative_to(runs)) for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


@dataclass
class RunView:
    state: str
    step: int
    total: int | None
    losses: list[dict[str, Any]]  # {step, loss, series}
    evals: list[dict[str, Any]]
    adapter: str | None
    log: str


def read_log(folder: Path) -> list[dict[str, Any]]:
    path = folder / LOG_FILE
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return entries


def total_steps(command: list[str]) -> int | None:
    for arg in command:
        if arg.startswith("train.max_steps="):
            return int(arg.split("=", 1)[1])
    return None


def view(folder: Path) -> RunView:
    state = jobs.read(folder)
    entries = read_log(folder)
    losses = [{"step": e["step"], "loss": e["loss"], "series": "train loss"} for e in entries if "loss" in e]
    losses += [{"step": e["step"], "loss": e["eval_loss"], "series": "eval loss"} for e in entries if "eval_loss" in e]
    evals = [e for e in entries if "eval_loss" in e]
    adapter = None
    if not state.running:
        try:
            adapter = str(resolve_checkpoint(folder))
        except TunellmError:
            adapter = None
    step = max((e["step"] for e in entries), default=0)
    label = state.state if state.state != "none" else ("finished" if adapter else "no job")
    return RunView(label, step, total_steps(state.command), losses, evals, adapter, jobs.log_tail(folder))


def data_stats(form: TrainForm, root: Path, histogram: Path) -> dict[str, Any]:
    """`tunellm data stats --json` on the chosen files, with the form's model and cutoff."""
    if not form.train:
        raise ConfigError("choose at least one training file", field="data")
    args = ["data", "stats", *(str(inside(root, path)) for path in form.train), "--json", "--histogram", str(histogram)]
    if form.model.strip():
        args += ["--model", model_argument(root, form.model)]
    args.append(f"data.cutoff_len={int(form.cutoff_len)}")
    done = subprocess.run(jobs.tunellm_command(*args), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise TunellmError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "data stats failed")
    return json.loads(done.stdout.strip().splitlines()[-1])
