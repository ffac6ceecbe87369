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
        args += ["--model", form.model.strip()]
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
        args += ["--model", form.model.strip()]
    args.append(f"data.cutoff_len={int(form.cutoff_len)}")
    done = subprocess.run(jobs.tunellm_command(*args), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise TunellmError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "data stats failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build(root: Path, runs: Path, choose_files: Any, demo: Any) -> None:
    """The page's components and events, inside an open gradio Blocks."""
    import gradio as gr

    with gr.Row():
        train_files = gr.Dropdown(
            choose_files(), multiselect=True, label="Training data", scale=3, elem_id="train-data"
        )
        dev_files = gr.Dropdown(choose_files(), multiselect=True, label="Dev data (optional)", scale=2)
    with gr.Row():
        model = gr.Textbox(label="Model (blank: the embedded default)", scale=3)
        method = gr.Dropdown(list(METHODS.names()), value="lora", label="Method", scale=1)
        run_name = gr.Textbox(label="Run name (folder under --runs)", scale=2, elem_id="train-run-name")
    with gr.Row():
        learning_rate = gr.Number(2e-4, label="learning_rate")
        epochs = gr.Number(1, label="num_train_epochs")
        max_steps = gr.Number(0, precision=0, label="max_steps (0: by epochs)", elem_id="train-max-steps")
        batch = gr.Number(4, precision=0, label="batch size")
        cutoff = gr.Number(512, precision=0, label="cutoff_len", elem_id="train-cutoff")
        rank = gr.Number(8, precision=0, label="LoRA r")
        eval_steps = gr.Number(0, precision=0, label="eval/save every (0: default)")
    extra = gr.Textbox(label="More keys, one key=value per line (e.g. data.template=chatml)", lines=2)
    with gr.Row():
        check = gr.Button("Check data", elem_id="train-check")
        go = gr.Button("Start training", variant="primary", elem_id="train-start")
    stats = gr.JSON(label="Data check (tunellm data stats)", visible=False)
    histogram = gr.Image(label="Token lengths", type="pil", visible=False, interactive=False)
    with gr.Row():
        run = gr.Dropdown(list_runs(runs), label="Run", scale=3, elem_id="train-run")
        stop_button = gr.Button("Stop", variant="stop", scale=0, elem_id="train-stop")
        resume_button = gr.Button("Resume", scale=0, elem_id="train-resume")
        rescan = gr.Button("Rescan", scale=0)
    state = gr.Markdown(elem_id="train-state")
    curve = gr.LinePlot(x="step", y="loss", color="series", label="Loss", elem_id="train-curve", height=300)
    scores = gr.JSON(label="Eval scores")
    log = gr.Code(label="Output", lines=10, interactive=False, elem_id="train-log")
    timer = gr.Timer(2.0)
    knobs = [train_files, dev_files, model, method, run_name, learning_rate, epochs, max_steps, batch, cutoff, rank]
    knobs += [eval_steps, extra]

    def form_of(*values):
        return TrainForm(*values)

    def show(chosen):
        if not chosen:
            return "no run chosen", None, None, ""
        try:
            current = view(inside(runs, chosen))
        except ConfigError as error:
            return f"**Error:** {error}", None, None, ""
        import pandas as pd

        total = f"/{current.total}" if current.total else ""
        text = f"**{chosen}**: {current.state}, step {current.step}{total}"
        if current.adapter:
            text += f"; checkpoint to use: `{current.adapter}`"
        table = pd.DataFrame(current.losses or [], columns=["step", "loss", "series"])
        return text, table, current.evals or None, current.log

    def do_check(*values):
        import tempfile

        from PIL import Image

        try:
            with tempfile.TemporaryDirectory() as folder:
                picture = Path(folder) / "lengths.png"
                summary = data_stats(form_of(*values), root, picture)
                with Image.open(picture) as opened:
                    image = opened.copy()
        except TunellmError as error:
            return gr.update(value={"error": str(error)}, visible=True), gr.update(visible=False)
        summary.pop("histogram", None)
        return gr.update(value=summary, visible=True), gr.update(value=image, visible=True)

    def do_start(*values):
        try:
            folder, _ = start(form_of(*values), root, runs)
        except (TunellmError, RuntimeError) as error:
            return gr.skip(), f"**Error:** {error}"
        name = str(folder.relative_to(runs))
        return gr.update(choices=list_runs(runs), value=name), f"**{name}**: started"

    def do_stop(chosen):
        if chosen:
            jobs.stop(inside(runs, chosen))
        return show(chosen)

    def do_resume(chosen):
        try:
            resume(inside(runs, chosen or ""))
        except (TunellmError, RuntimeError) as error:
            return f"**Error:** {error}", gr.skip(), gr.skip(), gr.skip()
        return show(chosen)

    check.click(do_check, knobs, [stats, histogram])
    go.click(do_start, knobs, [run, state])
    outputs = [state, curve, scores, log]
    timer.tick(show, run, outputs)
    run.change(show, run, outputs)
    stop_button.click(do_stop, run, outputs)
    resume_button.click(do_resume, run, outputs)
    rescan.click(lambda: gr.update(choices=list_runs(runs)), None, run)

    def newest():  # a reopened page shows the latest run, still going or not
        names = list_runs(runs)
        return gr.update(choices=names, value=names[0] if names else None)

    demo.load(newest, None, run)
