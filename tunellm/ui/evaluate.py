"""The Evaluate page: `tunellm eval FILE --adapter RUN --compare` as a detached subprocess, then its table and chart.

The scores go to `<run>/ui-eval/` (metrics.json, metrics.md, metrics.png, predictions.jsonl): what
`tunellm eval --output` writes, shown as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunellm.errors import ConfigError
from tunellm.ui import jobs
from tunellm.ui.paths import inside

EVAL_FOLDER = "ui-eval"
TABLE = "metrics.md"
CHART = "metrics.png"


def eval_command(
    data: str, run: str, root: Path, runs: Path, max_rows: int = 0, max_new_tokens: int = 0
) -> tuple[Path, list[str]]:
    """The output folder and the command: the run's best checkpoint against its base model (`--compare`)."""
    if not data:
        raise ConfigError("choose a data file to score", field="data")
    if not run:
        raise ConfigError("choose a run to compare with its base model", field="run")
    folder = inside(runs, run) / EVAL_FOLDER
    args = ["eval", str(inside(root, data)), "--adapter", str(inside(runs, run)), "--compare"]
    args += ["--output", str(folder), "--no-progress"]
    if int(max_rows) > 0:
        args += ["--max-rows", str(int(max_rows))]
    if int(max_new_tokens) > 0:
        args += ["--max-new-tokens", str(int(max_new_tokens))]
    return folder, jobs.tunellm_command(*args)


def start(data: str, run: str, root: Path, runs: Path, max_rows: int = 0, max_new_tokens: int = 0) -> Path:
    folder, command = eval_command(data, run, root, runs, max_rows, max_new_tokens)
    for name in (TABLE, CHART):
        (folder / name).unlink(missing_ok=True)  # no stale scores while the new ones are computed
    jobs.start(folder, command)
    return folder


@dataclass
class EvalView:
    state: str
    table: str
    chart: Path | None
    log: str


def view(folder: Path) -> EvalView:
    state = jobs.read(folder)
    table = (folder / TABLE).read_text(encoding="utf-8") if (folder / TABLE).is_file() else ""
    chart = folder / CHART if (folder / CHART).is_file() else None
    return EvalView(state.state, table, chart, jobs.log_tail(folder))


def build(root: Path, runs: Path, list_runs: Any, choose_files: Any, demo: Any) -> None:
    """The page's components and events, inside an open gradio Blocks."""
    import gradio as gr

    with gr.Row():
        data = gr.Dropdown(
            choose_files(), label="Data file to score", allow_custom_value=True, scale=3, elem_id="eval-data"
        )
        run = gr.Dropdown(
            list_runs(),
            label="Run (its best checkpoint vs its base model)",
            scale=3,
            elem_id="eval-run",
            allow_custom_value=True,
        )
        refresh = gr.Button("Rescan", scale=0)
    with gr.Row():
        max_rows = gr.Number(20, precision=0, label="Rows (0: all)")
        max_new = gr.Number(64, precision=0, label="Max new tokens (0: the run's generate.max_new_tokens)")
        go = gr.Button("Evaluate base vs tuned", variant="primary", elem_id="eval-start")
    state = gr.Markdown(elem_id="eval-state")
    table = gr.Markdown(elem_id="eval-table")
    chart = gr.Image(label="Scores", type="pil", interactive=False, elem_id="eval-chart")
    log = gr.Code(label="Output", lines=8, interactive=False)
    timer = gr.Timer(2.0, active=False)

    def show(chosen):
        if not chosen:
            return "", "", None, "", gr.update()
        try:
            current = view(inside(runs, chosen) / EVAL_FOLDER)
        except ConfigError as error:
            return f"**Error:** {error}", "", None, "", gr.update(active=False)
        image = None
        if current.chart is not None:
            from PIL import Image

            with Image.open(current.chart) as opened:
                image = opened.copy()
        done = current.state != "running"
        return f"evaluation: {current.state}", current.table, image, current.log, gr.update(active=not done)

    def begin(file, chosen, rows, new_tokens):
        try:
            start(file or "", chosen or "", root, runs, int(rows or 0), int(new_tokens or 0))
        except (ConfigError, RuntimeError) as error:
            return f"**Error:** {error}", gr.skip(), gr.skip(), gr.skip(), gr.update(active=False)
        return "evaluation: running", "", None, "", gr.update(active=True)

    outputs = [state, table, chart, log, timer]
    go.click(begin, [data, run, max_rows, max_new], outputs)
    timer.tick(show, run, outputs)
    run.change(show, run, outputs)
    rescan = lambda: (gr.update(choices=choose_files()), gr.update(choices=list_runs()))  # noqa: E731
    refresh.click(rescan, None, [data, run])
    demo.load(rescan, None, [data, run])
