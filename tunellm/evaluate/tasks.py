"""What a scored row is, which task it belongs to, and reading answers out of free model output.

The task kind of a row comes from its data, never from a flag:
- `choice`: the record lists `answer_choices` (PromptCBLUE) and its reference is one of them or one of
  the data's own "none of the above" labels. Decided per task (`task_dataset`/`task_type`) by majority,
  so a task whose references are mostly free text (CHIP-CDN, NER) is not split across two kinds.
- `extraction`: the reference is a JSON list of objects, fenced in a code block or not (transformers_tasks).
- `label`: the reference is a JSON list holding one string, such as `["水果"]` (transformers_tasks).
- `text`: any other reference; `none`: no reference to score against.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["choice", "extraction", "label", "text", "none"]

# "none of the above" answers used by the data itself; they are valid answers though not listed as choices
NONE_LABELS = ("非上述类型", "没有对应的标准化实体")
KIND_GROUPS = {
    "choice": "classification",
    "label": "classification",
    "extraction": "extraction",
    "text": "text",
    "none": "unscored",
}
TASK_FIELDS = ("task_dataset", "task_type")
FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|\Z)", re.S)


@dataclass
class EvalRow:
    output: str
    reference: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: Kind = "text"
    group: str = "all"
    loss_sum: float = 0.0  # summed token loss over the reference's trained tokens (0 when not computed)
    tokens: int = 0


@dataclass
class ParsedList:
    items: list[Any]
    complete: bool  # the whole list parsed; False: nothing found, or objects salvaged from a broken list
    fenced: bool


def normalize(text: str) -> str:
    """NFKC, case-folded, without whitespace and punctuation: `（症状）` and `(症状)` compare equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch)[0] in "PZC"))


def unfence(text: str) -> tuple[str, bool]:
    """The inside of the first ``` code block (an unclosed one runs to the end), else the text itself."""
    match = FENCE.search(text)
    return (match.group(1), True) if match else (text, False)


def _literal(text: str) -> Any:
    """A Python literal (single-quoted "JSON"), or None."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def parse_json_list(text: str, *, strict: bool = False) -> ParsedList:
    """The JSON list in `text`, fenced or not.

    strict (references): the whole text, once unfenced, must be the list. Otherwise (model output) the
    first `[` that starts a list wins, whatever text surrounds it; Python-literal quoting is accepted; and
    a broken list (cut off, a missing comma) yields the complete objects found in it, with complete=False.
    """
    body, fenced = unfence(text)
    if strict:
        body = body.strip()
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        return ParsedList(value, True, fenced) if isinstance(value, list) else ParsedList([], False, fenced)
    decoder = json.JSONDecoder()
    end = body.rfind("]")
    for start in (i for i, ch in enumerate(body) if ch == "["):
        try:
            value = decoder.raw_decode(body, start)[0]
        except ValueError:
            value = _literal(body[start : end + 1]) if "'" in body[start:end] else None
        if isinstance(value, list):
            return ParsedList(value, True, fenced)
    return ParsedList(salvage_objects(body), False, fenced)


def salvage_objects(body: str) -> list[dict[str, Any]]:
    """Every complete top-level JSON object in `body`, in order."""
    decoder = json.JSONDecoder()
    items, position = [], 0
    while (start := body.find("{", position)) >= 0:
        try:
            value, position = decoder.raw_decode(body, start)
        except ValueError:
            position = start + 1
            continue
        if isinstance(value, dict):
            items.append(value)
    return items


def answer_labels(extra: dict[str, Any]) -> list[str]:
    choices = extra.get("answer_choices")
    listed = [c for c in choices if isinstance(c, str)] if isinstance(choices, list) else []
    return list(dict.fromkeys([*listed, *NONE_LABELS])) if listed else []


def row_kind(reference: str | None, extra: dict[str, Any]) -> Kind:
    if reference is None or not reference.strip():
        return "none"
    labels = answer_labels(extra)
    if labels and normalize(reference) in {normalize(label) for label in labels}:
        return "choice"
    parsed = parse_json_list(reference, strict=True)
    if parsed.complete:
        if all(isinstance(item, dict) for item in parsed.items) and (parsed.items or parsed.fenced):
            return "extraction"
        if len(parsed.items) == 1 and isinstance(parsed.items[0], str):
            return "label"
    return "text"


def task_of(extra: dict[str, Any]) -> str | None:
    for name in TASK_FIELDS:
        if extra.get(name):
            return str(extra[name])
    return None


def detect_kinds(references: Sequence[str | None], extras: Sequence[dict[str, Any]]) -> list[Kind]:
    """Each row's kind; within one task, `choice` holds for all its scored rows or none of them (majority)."""
    kinds = [row_kind(ref, extra) for ref, extra in zip(references, extras, strict=True)]
    scored: Counter[str] = Counter()
    choice: Counter[str] = Counter()
    for kind, extra in zip(kinds, extras, strict=True):
        task = task_of(extra)
        if task is not None and kind != "none":
            scored[task] += 1
            choice[task] += kind == "choice"
    result: list[Kind] = []
    for kind, extra in zip(kinds, extras, strict=True):
        task = task_of(extra)
        if task is not None and kind != "none":
            is_choice_task = 2 * choice[task] > scored[task]
            if is_choice_task and answer_labels(extra):
                kind = "choice"
            elif kind == "choice" and not is_choice_task:
                kind = "text"
        result.append(kind)
    return result


def group_of(kind: Kind, extra: dict[str, Any], group_by: str) -> str:
    """The breakdown a row is counted in (see `eval.group_by`)."""
    if group_by == "none":
        return "all"
    if group_by == "auto":
        return task_of(extra) or KIND_GROUPS[kind]
    if group_by == "kind":
        return KIND_GROUPS[kind]
    value = extra.get(group_by)
    return "(unset)" if value is None or value == "" else str(value)
