"""Reports of one or several evaluated models: a Markdown table, a bar chart, and differences to the first.

One model: a row per task (overall first), a column per metric. Several: a row per task and metric, a
column per model, then one column per later model with its difference to the first (the base model when
`--compare` added it).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunellm.evaluate.metrics import LOSS_KEYS, metric_keys
from tunellm.evaluate.run import EvalResult

OVERALL = "overall"
MAIN_KEYS = ("accuracy", "ie_f1", "rougeL", "exact_match")  # the score a task's bar shows, first one present


def sections(result: EvalResult) -> dict[str, dict[str, Any]]:
    """Overall, then the groups; a single group equal to overall is left out."""
    groups = result.groups if len(result.groups) > 1 else {}
    return {OVERALL: result.overall, **groups}


def present_keys(results: Sequence[EvalResult]) -> list[str]:
    seen = {key for r in results for scores in sections(r).values() for key in scores}
    return [key for key in metric_keys() if key in seen]


def format_value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "rows":
        return str(value)
    return f"{value:.2f}" if key == "ppl" else f"{value:.4f}"


def format_diff(key: str, value: float | None) -> str:
    return "-" if value is None else ("+" if value >= 0 else "") + format_value(key, value)


def differences(results: Sequence[EvalResult]) -> dict[str, dict[str, dict[str, float]]]:
    """{label: {task: {metric: value - first model's value}}} for every model after the first."""
    first = sections(results[0])
    diffs: dict[str, dict[str, dict[str, float]]] = {}
    for result in results[1:]:
        diffs[result.label] = {
            task: {k: v - first[task][k] for k, v in scores.items() if k in metric_keys() and k in first.get(task, {})}
            for task, scores in sections(result).items()
            if task in first
        }
    return diffs


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def single_table(result: EvalResult) -> str:
    keys = present_keys([result])
    rows = [
        [task, format_value("rows", scores["rows"]), *(format_value(k, scores.get(k)) for k in keys)]
        for task, scores in sections(result).items()
    ]
    return _table(["task", "rows", *keys], rows)


def compare_table(results: Sequence[EvalResult]) -> str:
    keys, first, diffs = present_keys(results), results[0], differences(results)
    tasks = list(dict.fromkeys(task for r in results for task in sections(r)))
    rows = []
    for task in tasks:
        for key in ["rows", *keys]:
            values = [sections(r).get(task, {}).get(key) for r in results]
            if all(v is None for v in values):
                continue
            cells = [format_value(key, v) for v in values]
            if key != "rows":
                cells += [format_diff(key, diffs[r.label].get(task, {}).get(key)) for r in results[1:]]
            else:
                cells += [""] * (len(results) - 1)
            rows.append([task, key, *cells])
    header = ["task", "metric", *(r.label for r in results), *(f"Δ {r.label} - {first.label}" for r in results[1:])]
    return _table(header, rows)


def markdown_report(results: Sequence[EvalResult]) -> str:
    """The table, each model named, how many rows each overall metric scored, and the flags on classification
    scores that do not beat always answering the most frequent label."""
    lines = [f"- **{r.label}**: {r.model}" for r in results]
    table = single_table(results[0]) if len(results) == 1 else compare_table(results)
    scored = ", ".join(f"{name} {n}" for name, n in results[0].overall.get("scored", {}).items())
    flags = [flag for result in results for flag in baseline_flags(result)]
    flagged = ["", *flags] if flags else []
    return "\n".join([*lines, "", table, "", f"Rows scored per metric (overall): {scored or 'none'}.", *flagged]) + "\n"


def baseline_flags(result: EvalResult) -> list[str]:
    """One line per task (and overall) whose accuracy is not above its majority-label baseline."""
    flags = []
    for task, scores in sections(result).items():
        if scores.get("beats_majority") == 0.0:
            random = scores.get("random_accuracy")
            chance = f", uniform random pick {random:.4f}" if random is not None else ""
            flags.append(
                f"- ⚠ **{result.label}, {task}: accuracy {scores['accuracy']:.4f} does not beat always answering "
                f"the most frequent label ({scores['majority_accuracy']:.4f}{chance})**: the model may have learned "
                "the answer format and the label prior, not the task."
            )
    return flags


def bar_chart(results: Sequence[EvalResult], path: Path) -> None:
    """Overall scores side by side (loss and perplexity left out: another scale), and per task its main score."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = [k for k in present_keys(results) if k not in LOSS_KEYS and k != "rows"]
    tasks = [t for t in sections(results[0]) if t != OVERALL]
    panels = [("overall", keys, lambda r, k: r.overall.get(k))]
    if tasks:
        title = f"per task: the first of {', '.join(MAIN_KEYS)}"
        panels.append((title, tasks, lambda r, t: _main_score(r.groups.get(t, {}))))
    wide = max(6.0, 0.9 * max(len(keys), len(tasks), 1) + 2)
    figure, axes = plt.subplots(len(panels), 1, figsize=(wide, 3.6 * len(panels)))
    axes = [axes] if len(panels) == 1 else list(axes)
    width = 0.8 / len(results)
    for ax, (title, names, value) in zip(axes, panels, strict=True):
        for i, result in enumerate(results):
            heights = [value(result, name) or 0.0 for name in names]
            bars = ax.bar([x + i * width for x in range(len(names))], heights, width, label=result.label)
            ax.bar_label(bars, fmt="%.2f", fontsize="x-small")
        ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(names))], names, rotation=30, ha="right")
        ax.set_ylim(0, 1.1)
        ax.set_title(title)
        ax.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # task names in scripts the default font lacks draw as boxes, not errors
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(path, dpi=100)
    plt.close(figure)


def _main_score(scores: dict[str, Any]) -> float | None:
    return next((scores[k] for k in MAIN_KEYS if k in scores), None)
