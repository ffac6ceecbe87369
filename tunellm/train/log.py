"""What a run shows and leaves behind: a progress bar, train_log.jsonl, loss_curve.png, TensorBoard, W&B, MLflow."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from tunellm.atomic import atomic_open
from tunellm.errors import ConfigError

REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> module to import
LOG_FILE = "train_log.jsonl"
CURVE_FILE = "loss_curve.png"


def check_report_to(names: list[str]) -> None:
    """Fail before training when a named reporter is unknown or not installed."""
    for name in names:
        if name not in REPORTERS:
            raise ConfigError(f"unknown reporter '{name}'", field="train.report_to", expected=", ".join(REPORTERS))
        if importlib.util.find_spec(REPORTERS[name]) is None:
            raise ConfigError(
                f"train.report_to names '{name}' but it is not installed",
                field="train.report_to",
                hint=f"pip install {name}, or remove '{name}' from train.report_to",
            )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    """Train and eval loss against step, written atomically (object API: no pyplot state, no backend switch)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    figure.subplots_adjust(left=0.1, right=0.97, top=0.95, bottom=0.13)
    axes = figure.subplots()
    for key, label, style in (("loss", "train loss", "-"), ("eval_loss", "eval loss", "o-")):
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (mean over trained tokens)")
    axes.grid(alpha=0.3)
    if history:
        axes.legend()
    with atomic_open(path, "wb") as file:
        figure.savefig(file, format="png")


class RunLog:
    """Every logged entry goes to the JSONL file, the named reporters and the console; only one process writes."""

    def __init__(
        self,
        output_dir: Path,
        *,
        total_steps: int,
        start_step: int,
        history: list[dict[str, Any]],
        config: dict[str, Any],
        report_to: list[str],
        show: bool = True,
        enabled: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.enabled = enabled
        self.reporters: dict[str, Any] = {}
        self.progress: Any = None
        self.console: Any = None
        if not enabled:
            return
        # Rewrite the log from the checkpoint's history: lines a killed run wrote after its last checkpoint go.
        with open(output_dir / LOG_FILE, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(entry) + "\n" for entry in history)
        self._start_reporters(report_to, config, start_step)
        if show:
            self._start_progress(total_steps, start_step)

    def _start_reporters(self, report_to: list[str], config: dict[str, Any], start_step: int) -> None:
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events an earlier or killed run wrote after the step we start from.
            writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=start_step + 1)
            self.reporters["tensorboard"] = writer
        if "wandb" in report_to:
            import wandb

            project = os.environ.get("WANDB_PROJECT", "tunellm")
            self.reporters["wandb"] = wandb.init(
                project=project, name=self.output_dir.name, dir=str(self.output_dir), config=config
            )
        if "mlflow" in report_to:
            import mlflow

            mlflow.start_run(run_name=self.output_dir.name)
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(config).items()})
            self.reporters["mlflow"] = mlflow

    def _start_progress(self, total_steps: int, start_step: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        if not self.console.is_terminal:
            return  # no live bar in a pipe or file: one line per logged step instead
        self.progress = Progress(
            TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
            BarColumn(),
            TextColumn("epoch {task.fields[epoch]:.2f}  loss {task.fields[loss]}  lr {task.fields[lr]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=start_step, epoch=0.0, loss="-", lr="-", tps="-"
        )
        self.progress.start()

    def advance(self, step: int, epoch: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, epoch=epoch)

    def write(self, entry: dict[str, Any]) -> None:
        """Record one train entry (with `loss`) or eval entry (with `eval_loss`)."""
        if not self.enabled:
            return
        with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
        step = entry["step"]
        group = "eval" if "eval_loss" in entry else "train"
        scalars = {
            f"{group}/{key.removeprefix('eval_')}": value
            for key, value in entry.items()
            if key not in ("step", "epoch", "elapsed") and isinstance(value, (int, float))
        }
        if "tensorboard" in self.reporters:
            for name, value in scalars.items():
                self.reporters["tensorboard"].add_scalar(name, value, step)
        if "wandb" in self.reporters:
            self.reporters["wandb"].log(scalars, step=step)
        if "mlflow" in self.reporters:
            self.reporters["mlflow"].log_metrics({k.replace("/", "_"): v for k, v in scalars.items()}, step=step)
        self._show(entry)

    def _show(self, entry: dict[str, Any]) -> None:
        if self.progress is not None and "loss" in entry:
            tps = f"{entry['tokens_per_s']:.0f}"
            self.progress.update(self.task, loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}", tps=tps)
        elif self.progress is not None:
            self.progress.console.print(f"step {entry['step']}: eval loss {entry['eval_loss']:.4f}")
        elif self.console is not None:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items())
            self.console.print(text, highlight=False, soft_wrap=True)

    def plot(self, history: list[dict[str, Any]]) -> None:
        if self.enabled:
            plot_losses(history, self.output_dir / CURVE_FILE)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if "tensorboard" in self.reporters:
            self.reporters["tensorboard"].close()
        if "wandb" in self.reporters:
            self.reporters["wandb"].finish()
        if "mlflow" in self.reporters:
            self.reporters["mlflow"].end_run()
