"""The Train page's gradio layout and events; what they run is `tunellm.ui.train`."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from tunellm.errors import ConfigError, TunellmError
from tunellm.methods import METHODS
from tunellm.ui import jobs
from tunellm.ui.paths import inside
from tunellm.ui.train import TrainForm, data_stats, list_runs, resume, start, view


class TrainView:
    """Builds the page inside an open gradio Blocks; a timer refreshes the chosen run every 2 s."""

    def __init__(self, root: Path, runs: Path, choose_files: Callable[[], list[str]], demo: Any) -> None:
        self.root, self.runs = root, runs
        self._form_part(choose_files())
        self._run_part()
        self._wire(demo)

    def _form_part(self, files: list[str]) -> None:
        with gr.Row():
            train = gr.Dropdown(files, multiselect=True, label="Training data", scale=3, elem_id="train-data")
            dev = gr.Dropdown(files, multiselect=True, label="Dev data (optional)", scale=2)
        with gr.Row():
            model = gr.Textbox(label="Model (blank: the embedded default)", scale=3)
            method = gr.Dropdown(list(METHODS.names()), value="lora", label="Method", scale=1)
            name = gr.Textbox(label="Run name (folder under --runs)", scale=2, elem_id="train-run-name")
        with gr.Row():
            numbers = [
                gr.Number(2e-4, label="learning_rate"),
                gr.Number(1, label="num_train_epochs"),
                gr.Number(0, precision=0, label="max_steps (0: by epochs)", elem_id="train-max-steps"),
                gr.Number(4, precision=0, label="batch size"),
                gr.Number(512, precision=0, label="cutoff_len", elem_id="train-cutoff"),
                gr.Number(8, precision=0, label="LoRA r"),
                gr.Number(0, precision=0, label="eval/save every (0: default)"),
            ]
        extra = gr.Textbox(label="More keys, one key=value per line (e.g. data.template=chatml)", lines=2)
        self.knobs = [train, dev, model, method, name, *numbers, extra]  # TrainForm's fields, in order
        with gr.Row():
            self.check = gr.Button("Check data", elem_id="train-check")
            self.go = gr.Button("Start training", variant="primary", elem_id="train-start")
        self.stats = gr.JSON(label="Data check (tunellm data stats)", visible=False)
        self.histogram = gr.Image(label="Token lengths", type="pil", visible=False, interactive=False)

    def _run_part(self) -> None:
        with gr.Row():
            self.run = gr.Dropdown(list_runs(self.runs), label="Run", scale=3, elem_id="train-run")
            self.stop = gr.Button("Stop", variant="stop", scale=0, elem_id="train-stop")
            self.resume = gr.Button("Resume", scale=0, elem_id="train-resume")
            self.rescan = gr.Button("Rescan", scale=0)
        self.state = gr.Markdown(elem_id="train-state")
        self.curve = gr.LinePlot(x="step", y="loss", color="series", label="Loss", elem_id="train-curve", height=300)
        self.scores = gr.JSON(label="Eval scores")
        self.log = gr.Code(label="Output", lines=10, interactive=False, elem_id="train-log")
        self.timer = gr.Timer(2.0)

    def _wire(self, demo: Any) -> None:
        shown = [self.state, self.curve, self.scores, self.log]
        self.check.click(self.check_data, self.knobs, [self.stats, self.histogram])
        self.go.click(self.start, self.knobs, [self.run, self.state])
        self.timer.tick(self.show, self.run, shown)
        self.run.change(self.show, self.run, shown)
        self.stop.click(self.stop_run, self.run, shown)
        self.resume.click(self.resume_run, self.run, shown)
        self.rescan.click(lambda: gr.update(choices=list_runs(self.runs)), None, self.run)
        demo.load(self.newest, None, self.run)

    # ---- handlers
    def newest(self) -> Any:
        """A reopened page shows the latest run, still going or not."""
        names = list_runs(self.runs)
        return gr.update(choices=names, value=names[0] if names else None)

    def show(self, chosen: str | None) -> tuple[Any, ...]:
        if not chosen:
            return "no run chosen", None, None, ""
        try:
            current = view(inside(self.runs, chosen))
        except ConfigError as error:
            return f"**Error:** {error}", None, None, ""
        import pandas as pd

        total = f"/{current.total}" if current.total else ""
        text = f"**{chosen}**: {current.state}, step {current.step}{total}"
        if current.adapter:
            text += f"; checkpoint to use: `{current.adapter}`"
        table = None  # not an empty frame: its object columns would fix the plot's axes as categories
        if current.losses:
            table = pd.DataFrame(current.losses, columns=["step", "loss", "series"]).astype({"loss": float})
        return text, table, current.evals or None, current.log

    def check_data(self, *values: Any) -> tuple[Any, Any]:
        from PIL import Image

        try:
            with tempfile.TemporaryDirectory() as folder:
                picture = Path(folder) / "lengths.png"
                summary = data_stats(TrainForm(*values), self.root, picture)
                with Image.open(picture) as opened:
                    image = opened.copy()
        except TunellmError as error:
            return gr.update(value={"error": str(error)}, visible=True), gr.update(visible=False)
        summary.pop("histogram", None)
        return gr.update(value=summary, visible=True), gr.update(value=image, visible=True)

    def start(self, *values: Any) -> tuple[Any, str]:
        try:
            folder, _ = start(TrainForm(*values), self.root, self.runs)
        except (TunellmError, RuntimeError) as error:
            return gr.skip(), f"**Error:** {error}"
        name = str(folder.relative_to(self.runs))
        return gr.update(choices=list_runs(self.runs), value=name), f"**{name}**: started"

    def stop_run(self, chosen: str | None) -> tuple[Any, ...]:
        if chosen:
            jobs.stop(inside(self.runs, chosen))
        return self.show(chosen)

    def resume_run(self, chosen: str | None) -> tuple[Any, ...]:
        try:
            resume(inside(self.runs, chosen or ""))
        except (TunellmError, RuntimeError) as error:
            return f"**Error:** {error}", gr.skip(), gr.skip(), gr.skip()
        return self.show(chosen)
