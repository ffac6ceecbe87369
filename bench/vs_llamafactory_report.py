"""The report of bench/vs_llamafactory.py: per-run table, mean and spread per tool, and the paired sign test.

Both tools answer the same held-out rows, so rows are compared pairwise (per-row scores from `score` in
vs_llamafactory.py) rather than only as two means.
"""

from __future__ import annotations

import math
import statistics


def summarize(metrics: tuple[str, ...], results: list[dict]) -> str:
    """The results table, mean and spread per tool of each of `metrics`, and the paired comparisons."""
    names = {"answer_parse_rate": "parse rate", "macro_f1": "macro F1", "ie_f1": "IE F1", "ie_parse_rate": "IE parse"}
    header = ["tool", "seed", *(names.get(key, key) for key in metrics), "scored", "train s", "gen s", "loss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r["tool"], r["seed"], *(f"{r[key]:.3f}" for key in metrics), r["scored"], r.get("train_s", ""),
                 r["gen_s"], r.get("loss", "")]  # fmt: skip
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    for tool in dict.fromkeys(r["tool"] for r in results):
        mine = [r for r in results if r["tool"] == tool]
        for key in metrics:
            values = [r[key] for r in mine]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(f"{tool} {key}: mean {statistics.mean(values):.3f}, sd {spread:.3f} over {len(values)} seeds")
    if "majority_accuracy" in results[0]:
        lines.append(f"majority-label baseline: {results[0]['majority_accuracy']:.3f}")
    lines += paired(results) + paired(results, "per_row_parsed", "answers read: ")
    return "\n".join(lines)


def paired(results: list[dict], key: str = "per_row", label: str = "") -> list[str]:
    """Per seed and pooled: held-out rows tunellm's answer scored higher on (by the per-row list `key`) against
    rows LLaMA-Factory's did (for a label, right against wrong), and the exact two-sided sign-test p-value of that
    split (McNemar's exact test for labels): the same rows are scored by both, so the rows they tie on say
    nothing about which is better. Each line starts with `label`."""
    by = {(r["tool"], r["seed"]): r[key] for r in results if key in r}
    lines, pooled = [], [0, 0]
    for seed in dict.fromkeys(r["seed"] for r in results):
        ours, theirs = by.get(("tunellm", seed)), by.get(("llamafactory", seed))
        if ours is None or theirs is None:
            continue
        ahead = sum(a > b for a, b in zip(ours, theirs, strict=True))
        behind = sum(b > a for a, b in zip(ours, theirs, strict=True))
        pooled = [pooled[0] + ahead, pooled[1] + behind]
        lines.append(f"{label}seed {seed}: rows better with tunellm {ahead}, with llamafactory {behind}, "
                     f"sign test p = {sign_test(ahead, behind):.3f}")  # fmt: skip
    if len(lines) > 1:
        lines.append(f"{label}pooled over seeds: better with tunellm {pooled[0]}, with llamafactory {pooled[1]}, "
                     f"sign test p = {sign_test(*pooled):.3f}")  # fmt: skip
    return lines


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial p-value of `wins` against `losses` under a fair coin."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)
