"""Accuracy of classification rows: choice tasks (`answer_choices`) and one-label JSON lists (`["水果"]`).

Choice rows: the answer read from the output is the listed choice (or "none of the above" label such as
非上述类型) that the whole output equals once normalized (no punctuation or whitespace, NFKC, case-folded);
else the one label the output contains, an occurrence inside a longer label's not counting (不相关 holds
相关). Two labels found, or none, is no answer, and wrong.
Label rows: the one string of the JSON list in the output (fenced or not), else the whole output.
Correct: the answer equals the reference, normalized. `answer_parse_rate` is the share of outputs read
as one answer in the expected form (a listed label; a one-string JSON list).
Baselines, so a score can be judged: `majority_accuracy` is the accuracy of always answering each task's most
frequent reference label (per group when rows of several tasks are scored together); `random_accuracy`, for
choice rows, the expected accuracy of a uniform random pick among the listed choices; `beats_majority` is 1.0
when accuracy is above the majority baseline, else 0.0 (the report flags it). `macro_f1`: F1 per label (those
in references or answers), averaged, an unread answer counting as a miss.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from tunellm.evaluate.metrics.base import METRICS, Metric, mean
from tunellm.evaluate.tasks import EvalRow, answer_labels, normalize, parse_json_list


def read_choice(output: str, labels: Sequence[str]) -> str | None:
    """The label `output` answers with, or None."""
    text = normalize(output)
    by_form = {normalize(label): label for label in labels if normalize(label)}
    if text in by_form:
        return by_form[text]
    spans = {form: [(m.start(), m.end()) for m in re.finditer(re.escape(form), text)] for form in by_form}

    def inside_longer(form: str, start: int, end: int) -> bool:
        return any(len(o) > len(form) and a <= start and end <= b for o in spans for a, b in spans[o])

    found = [form for form, at in spans.items() if any(not inside_longer(form, a, b) for a, b in at)]
    return by_form[found[0]] if len(found) == 1 else None


def read_label(output: str) -> tuple[str, bool]:
    """(the label, whether it came as a one-string JSON list)."""
    parsed = parse_json_list(output)
    if parsed.complete and len(parsed.items) == 1 and isinstance(parsed.items[0], str):
        return parsed.items[0], True
    return output, False


class ChoiceAccuracy(Metric):
    name = "choice_accuracy"
    higher_is_better = True
    keys = ("accuracy", "majority_accuracy", "random_accuracy", "beats_majority", "macro_f1", "answer_parse_rate")

    def applies(self, row: EvalRow) -> bool:
        return row.kind in ("choice", "label")

    def score(self, preds: Sequence[str], refs: Sequence[str], rows: Sequence[EvalRow]) -> dict[str, float]:
        answers: list[str | None] = []
        labels: list[str] = []
        parsed = []
        for pred, ref, row in zip(preds, refs, rows, strict=True):
            if row.kind == "choice":
                same = normalize(pred) == normalize(ref)  # also when a noisy reference is not among the choices
                answer = ref if same else read_choice(pred, answer_labels(row.extra))
                ok = answer is not None
            else:
                label = parse_json_list(ref, strict=True).items[0]
                ref, (answer, ok) = label, read_label(pred)
            labels.append(normalize(ref))
            answers.append(None if answer is None else normalize(answer))
            parsed.append(float(ok))
        accuracy = mean([float(a == r) for a, r in zip(answers, labels, strict=True)])
        majority = majority_accuracy(labels, [row.group for row in rows])
        scores = {
            "accuracy": accuracy,
            "majority_accuracy": majority,
            "beats_majority": float(accuracy > majority),
            "macro_f1": macro_f1(answers, labels),
            "answer_parse_rate": mean(parsed),
        }
        choice_rows = [(row, label) for row, label in zip(rows, labels, strict=True) if row.kind == "choice"]
        if choice_rows:
            scores["random_accuracy"] = mean([uniform_pick(row, label) for row, label in choice_rows])
        return dict(sorted(scores.items(), key=lambda item: self.keys.index(item[0])))


def majority_accuracy(labels: Sequence[str], groups: Sequence[str]) -> float:
    """The accuracy of always answering each task's (group's) most frequent reference label."""
    by_group: dict[str, Counter[str]] = defaultdict(Counter)
    for label, group in zip(labels, groups, strict=True):
        by_group[group][label] += 1
    return sum(counts.most_common(1)[0][1] for counts in by_group.values()) / len(labels) if labels else 0.0


def uniform_pick(row: EvalRow, label: str) -> float:
    """The chance that a uniform random pick among the row's listed choices is its reference."""
    choices = {normalize(c) for c in row.extra.get("answer_choices", []) if isinstance(c, str)}
    return 1 / len(choices) if label in choices else 0.0


def macro_f1(answers: Sequence[str | None], labels: Sequence[str]) -> float:
    """F1 per label, averaged over the labels seen in references or answers (an unread answer is a miss)."""
    names = set(labels) | {a for a in answers if a is not None}
    f1s = []
    for name in names:
        tp = sum(a == name and r == name for a, r in zip(answers, labels, strict=True))
        fp = sum(a == name and r != name for a, r in zip(answers, labels, strict=True))
        fn = sum(a != name and r == name for a, r in zip(answers, labels, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return mean(f1s)


METRICS.register(ChoiceAccuracy.name)(ChoiceAccuracy())
