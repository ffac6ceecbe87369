"""Records as forms that fit their format, and export to a training file; no gradio here, so it is unit-tested.

A form has the same boxes for every format, shown or hidden by `visible`: the prompt (instruction,
context, input, prompt or text), the alpaca input, the response (output, target, response), a class
label and extraction triples read from a context/target `target`, PromptCBLUE's answer choices, the
multi-turn part as JSON (history, conversations or messages), and every other field as JSON.
`row_from_form` keeps a field exactly as it was unless its box changed, so an unedited record is
written back byte for byte.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunellm.atomic import atomic_open
from tunellm.data.formats import FORMATS, ReadOptions
from tunellm.data.read import convert
from tunellm.data.record import Source
from tunellm.errors import DataError

PROMPT = {
    "alpaca": "instruction",
    "context_target": "context",
    "promptcblue": "input",
    "chatglm": "prompt",
    "text": "text",
}
QUERY = {"alpaca": "input"}
RESPONSE = {"alpaca": "output", "context_target": "target", "promptcblue": "target", "chatglm": "response"}
TURNS = {"alpaca": "history", "chatglm": "history", "sharegpt": "conversations", "openai": "messages"}
CHOICES = {"promptcblue": "answer_choices"}
TRIPLE_COLUMNS = ["subject", "predicate", "object", "subject_type", "object_type"]
BLANK = {
    "alpaca": {"instruction": "", "input": "", "output": ""},
    "context_target": {"context": "", "target": ""},
    "promptcblue": {"input": "", "target": "", "answer_choices": None},
    "chatglm": {"prompt": "", "response": "", "history": []},
    "sharegpt": {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}]},
    "openai": {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]},
    "text": {"text": ""},
}
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*)\n```\s*$", re.S)


@dataclass
class Form:
    prompt: str = ""
    query: str = ""
    response: str = ""
    label: str = ""
    triples: list[list[str]] = field(default_factory=list)
    choices: str = ""
    turns: str = ""
    extra: str = ""


def turns_key(fmt: str, row: dict[str, Any]) -> str | None:
    if fmt == "sharegpt" and "messages" in row and "conversations" not in row:
        return "messages"
    return TURNS.get(fmt)


def _keys(fmt: str, row: dict[str, Any]) -> set[str]:
    used = {PROMPT.get(fmt), QUERY.get(fmt), RESPONSE.get(fmt), turns_key(fmt, row), CHOICES.get(fmt)}
    return {key for key in used if key}


def read_target(target: Any) -> tuple[str, list[list[str]]]:
    """(class label, triples) found in a context/target answer: `["label"]`, or a (fenced) JSON list of triples."""
    if not isinstance(target, str) or not target.strip():
        return "", []
    match = _FENCE.match(target)
    try:
        value = json.loads(match.group(1) if match else target)
    except ValueError:
        return "", []
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0], []
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return "", [[str(item.get(column, "")) for column in TRIPLE_COLUMNS] for item in value]
    return "", []


def write_triples(triples: list[list[str]]) -> str:
    rows = [dict(zip(TRIPLE_COLUMNS, (str(cell) for cell in row), strict=False)) for row in triples if any(row)]
    return "```json\n" + json.dumps(rows, ensure_ascii=False) + "\n```"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1) if value not in (None, {}, []) else ""


def form_from_row(fmt: str, row: dict[str, Any]) -> Form:
    keys = _keys(fmt, row)
    label, triples = read_target(row.get("target")) if fmt == "context_target" else ("", [])
    choices = row.get(CHOICES[fmt]) if fmt in CHOICES else None
    turns = turns_key(fmt, row)
    return Form(
        prompt=_text(row.get(PROMPT.get(fmt, ""))),
        query=_text(row.get(QUERY.get(fmt, ""))),
        response=_text(row.get(RESPONSE.get(fmt, ""))),
        label=label,
        triples=triples,
        choices="\n".join(str(choice) for choice in choices) if isinstance(choices, list) else "",
        turns=_json_text(row.get(turns)) if turns else "",
        extra=_json_text({key: value for key, value in row.items() if key not in keys}),
    )


def visible(fmt: str, form: Form) -> dict[str, bool]:
    """Which boxes fit this record."""
    answer = fmt == "context_target"
    return {
        "prompt": fmt in PROMPT,
        "query": fmt in QUERY,
        "response": fmt in RESPONSE,
        "label": answer and (bool(form.label) or not form.triples),
        "triples": answer and (bool(form.triples) or not form.label),
        "choices": fmt in CHOICES,
        "turns": fmt in TURNS,
    }


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError as error:
        raise DataError(f"the {name} box is not valid JSON: {error}", field=name) from None


def _set(row: dict[str, Any], key: str | None, value: Any) -> None:
    if key is None:
        return
    if value in (None, "") and key not in row:
        return
    row[key] = value


def row_from_form(fmt: str, before: dict[str, Any], form: Form) -> dict[str, Any]:
    """`before` with each box that changed written back; boxes left as they were keep their field untouched."""
    old = form_from_row(fmt, before)
    row = dict(before)
    if form.extra != old.extra:
        extra = _parse_json(form.extra, "other fields") or {}
        if not isinstance(extra, dict):
            raise DataError("the other-fields box must hold a JSON object", field="other fields")
        row = {key: value for key, value in row.items() if key in _keys(fmt, before)} | extra
    if form.prompt != old.prompt:
        _set(row, PROMPT.get(fmt), form.prompt)
    if form.query != old.query:
        _set(row, QUERY.get(fmt), form.query)
    response = form.response if form.response != old.response else row.get(RESPONSE.get(fmt, ""))
    if form.label != old.label and form.label.strip():
        response = json.dumps([form.label.strip()], ensure_ascii=False)
    elif _clean(form.triples) != _clean(old.triples):
        response = write_triples(_clean(form.triples))
    if fmt in RESPONSE and response != before.get(RESPONSE[fmt]):
        _set(row, RESPONSE[fmt], response)
    if form.choices != old.choices:
        choices = [line.strip() for line in form.choices.splitlines() if line.strip()]
        _set(row, CHOICES.get(fmt), choices or None)
    if form.turns != old.turns:
        _set(row, turns_key(fmt, before), _parse_json(form.turns, "conversation") or [])
    return row


def _clean(triples: Any) -> list[list[str]]:
    rows = triples.values.tolist() if hasattr(triples, "values") else list(triples or [])
    return [[str(cell) if cell is not None else "" for cell in row] for row in rows if any(str(c or "") for c in row)]


def check_row(fmt: str, row: dict[str, Any], where: Source) -> DataError | None:
    """The problem tunellm's reader finds in the row, if any (the same check training makes)."""
    try:
        convert(FORMATS.get(fmt), row, where, ReadOptions())
    except DataError as error:
        return error
    return None


EXPORT_AS = ("same", "openai")


def export_rows(rows: list[dict[str, Any]], fmt: str, path: Path, export_as: str = "same") -> int:
    """Write the rows as a training file: `.json` (array) or `.jsonl`, optionally `.gz`; in the rows' own
    format ("same") or as OpenAI messages ("openai", what `tunellm data convert` writes). Every row is
    checked first with tunellm's reader; any bad row stops the export and is named."""
    name = path.name.lower().removesuffix(".gz")
    if not name.endswith((".json", ".jsonl")):
        raise DataError("export to a .json or .jsonl file (optionally .gz)", file=str(path))
    if export_as not in EXPORT_AS:
        raise DataError(f"unknown export format {export_as!r}", expected=" or ".join(EXPORT_AS))
    reader = FORMATS.get(fmt)
    out = []
    for number, row in enumerate(rows, 1):
        where = Source(f"record {number}")
        conversation = convert(reader, row, where, ReadOptions())  # raises a DataError naming the record
        out.append(row if export_as == "same" else conversation.to_json())
    if not out:
        raise DataError("nothing to export: every record is deleted or rejected", file=str(path))
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in out)
    else:
        text = json.dumps(out, ensure_ascii=False, indent=2) + "\n"
    data = text.encode("utf-8")
    with atomic_open(path, "wb") as file:
        file.write(gzip.compress(data) if path.name.lower().endswith(".gz") else data)
    return len(out)
