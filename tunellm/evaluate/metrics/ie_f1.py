"""Information extraction: precision, recall and F1 over sets of (subject, predicate, object) triples.

The model's output is read with `parse_json_list` (fenced or not, text around it ignored; from a broken
list, the complete objects in it). Values compare after NFKC, trimming and case-folding; types
(subject_type, object_type) are not part of a triple, as in DuIE's scoring. An item that is not an object
with those three keys (wrong keys, a bare string) is a prediction that matches nothing. Counts are summed
over rows (micro average) and duplicates within a row count once. `ie_parse_rate` is the share of outputs
whose list parsed whole.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from tunellm.evaluate.metrics.base import METRICS, Metric, mean
from tunellm.evaluate.tasks import EvalRow, parse_json_list

TRIPLE = ("subject", "predicate", "object")


def clean(value: Any) -> str:
    return unicodedata.normalize("NFKC", "" if value is None else str(value)).strip().casefold()


def item_key(item: Any) -> tuple[str, ...]:
    if isinstance(item, dict) and all(name in item for name in TRIPLE):
        return tuple(clean(item[name]) for name in TRIPLE)
    if isinstance(item, dict):  # wrong keys: compared whole, so it can only match an identical reference item
        return ("{}", *sorted(f"{clean(k)}={clean(v)}" for k, v in item.items()))
    return ("?", clean(item))


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1; with nothing predicted and nothing to find, all three are 1."""
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else float(fp == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class InformationExtractionF1(Metric):
    name = "ie_f1"
    higher_is_better = True
    keys = ("ie_f1", "ie_precision", "ie_recall", "ie_parse_rate")

    def applies(self, row: EvalRow) -> bool:
        return row.kind == "extraction"

    def score(self, preds: Sequence[str], refs: Sequence[str], rows: Sequence[EvalRow]) -> dict[str, float]:
        tp = fp = fn = 0
        parsed = []
        for pred, ref in zip(preds, refs, strict=True):
            gold = {item_key(item) for item in parse_json_list(ref, strict=True).items}
            found = parse_json_list(pred)
            guess = {item_key(item) for item in found.items}
            tp, fp, fn = tp + len(gold & guess), fp + len(guess - gold), fn + len(gold - guess)
            parsed.append(float(found.complete))
        precision, recall, f1 = prf(tp, fp, fn)
        return {"ie_f1": f1, "ie_precision": precision, "ie_recall": recall, "ie_parse_rate": mean(parsed)}


METRICS.register(InformationExtractionF1.name)(InformationExtractionF1())
