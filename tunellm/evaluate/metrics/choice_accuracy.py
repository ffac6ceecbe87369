"""Accuracy of classification rows: choice tasks (`answer_choices`) and one-label JSON lists (`["水果"]`).

Choice rows: the answer read from the output is the listed choice (or "none of the above" label such as
非上述类型) that the whole output equals once normalized (no punctuation or whitespace, NFKC, case-folded);
else the one label the output contains, an occurrence inside a longer label's not counting (不相关 holds
相关). Two labels found, or none, is no answer, and wrong.
Label rows: the one string of the JSON list in the output (fenced or not), else the whole output.
Correct: the answer equals the reference, normalized. `answer_parse_rate` is the share of outputs read
as one answer in the expected form (a listed label; a one-string JSON list).
"""

from __future__ import annotations

import re
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
    keys = ("accuracy", "answer_parse_rate")

    def applies(self, row: EvalRow) -> bool:
        return row.kind in ("choice", "label")

    def score(self, preds: Sequence[str], refs: Sequence[str], rows: Sequence[EvalRow]) -> dict[str, float]:
        correct, parsed = [], []
        for pred, ref, row in zip(preds, refs, rows, strict=True):
            if row.kind == "choice":
                same = normalize(pred) == normalize(ref)  # also when a noisy reference is not among the choices
                answer = ref if same else read_choice(pred, answer_labels(row.extra))
                ok = answer is not None
            else:
                label = parse_json_list(ref, strict=True).items[0]
                ref, (answer, ok) = label, read_label(pred)
            correct.append(float(answer is not None and normalize(answer) == normalize(ref)))
            parsed.append(float(ok))
        return {"accuracy": mean(correct), "answer_parse_rate": mean(parsed)}


METRICS.register(ChoiceAccuracy.name)(ChoiceAccuracy())
