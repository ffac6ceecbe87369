"""Read data files into Conversations: files and globs; JSON arrays, JSON Lines and plain text; gzipped or not.

A `.json` or `.jsonl` file is a JSON array when its first character is `[` and JSON Lines when it is
`{`, whatever its name says. Blank lines are not records, in JSON Lines and in text alike. Problems
with a whole file (missing, not UTF-8, empty, a broken array, a format that cannot be told) always
stop the read; problems with one record stop it too unless `skip_bad`, which skips the record and
lists it in `ReadResult.bad`.
"""

from __future__ import annotations

import difflib
import gc
import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunellm.data.formats import FORMATS, Format, ReadOptions
from tunellm.data.formats.base import finish_record, json_problem, rename_columns, row_error, type_name
from tunellm.data.record import Conversation, Source
from tunellm.errors import DataError
from tunellm.registry import did_you_mean

KINDS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "txt"}
SNIFF_ROWS = 20  # records looked at to detect a file's format
SKIP_HINT = "to skip bad records and list them instead: --skip-bad (tunellm data) or data.skip_bad=true"
ParsedRow = tuple[Source, Any]  # the parsed JSON value, or the DataError of a line that did not parse


@dataclass
class ReadResult:
    conversations: list[Conversation] = field(default_factory=list)
    bad: list[DataError] = field(default_factory=list)  # skipped records, each naming where and why
    total: int = 0  # records seen: len(conversations) + len(bad)
    formats: dict[str, str] = field(default_factory=dict)  # file -> its format (detected or given)

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def summary(self, limit: int = 10) -> str:
        """One line of counts, then the first `limit` skipped records with their locations."""
        text = f"read {len(self.conversations)} of {self.total} records from {len(self.formats)} file(s)"
        if not self.bad:
            return text
        lines = [f"{text}; skipped {len(self.bad)} bad:"]
        lines += ["  " + str(error).split("\n")[0] for error in self.bad[:limit]]  # without the hint
        if len(self.bad) > limit:
            lines.append(f"  ... and {len(self.bad) - limit} more")
        return "\n".join(lines)


def read_conversations(
    paths: list[str], options: ReadOptions, format: str = "auto", skip_bad: bool = False
) -> ReadResult:
    """Every record of every file, in order. `format` is a registered format name or "auto" (per file)."""
    if format != "auto":
        FORMATS.get(format)  # an unknown name fails before any file is read
    result = ReadResult()
    for file in expand_paths(paths):
        with cyclic_gc_paused():
            rows = load_rows(file, options)
            fmt = pick_format(file, rows, format)
            check_columns(fmt, options.columns, file)
            result.formats[file] = fmt.name
            result.total += len(rows)
            for source, row in rows:
                try:
                    result.conversations.append(convert(fmt, row, source, options))
                except DataError as error:
                    if not skip_bad:
                        error.hint = "; ".join(filter(None, [error.hint, SKIP_HINT]))
                        raise
                    result.bad.append(error)
    return result


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Records are acyclic, so the collections that creating hundreds of thousands of objects triggers
    find nothing; they cost more than half the read time of a 52k-record file, and more in a big process."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def convert(fmt: Format, row: Any, source: Source, options: ReadOptions) -> Conversation:
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise row_error(source, f"record is {type_name(row)}", expected="a JSON object")
    return finish_record(fmt, fmt.to_record(row, source, options), options)


def expand_paths(paths: list[str]) -> list[str]:
    """Files in the order given, each glob's matches sorted; each must exist with a known extension."""
    if not paths:
        raise DataError("no data files given", hint="list files or globs, e.g. data/*.jsonl")
    files: list[str] = []
    for pattern in paths:
        pattern = os.path.expanduser(pattern)
        if Path(pattern).is_file():
            files.append(pattern)
        elif any(char in pattern for char in "*?["):
            matches = sorted(path for path in glob.glob(pattern, recursive=True) if Path(path).is_file())
            if not matches:
                raise DataError("the glob matches no file", file=pattern, hint=_near_names(pattern))
            files += matches
        elif Path(pattern).is_dir():
            raise DataError("is a folder", expected="data files", file=pattern, hint=f"use a glob: {pattern}/*.jsonl")
        else:
            raise DataError("file not found", file=pattern, hint=_near_names(pattern))
    for file in files:
        file_kind(file)
    return files


def _near_names(pattern: str) -> str | None:
    folder = Path(pattern).parent
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    names = sorted(path.name for path in folder.iterdir())
    close = difflib.get_close_matches(Path(pattern).name, names, n=3, cutoff=0.5)
    return f"near names in {folder}: {', '.join(close)}" if close else None


def file_kind(file: str) -> str:
    """json, jsonl or txt, from the name without a trailing .gz."""
    name = file.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix not in KINDS:
        raise DataError(
            f"unknown file type '{suffix or Path(file).name}'",
            file=file,
            expected="one of " + ", ".join(KINDS) + ", optionally gzipped (.gz)",
            hint="convert it to JSON Lines, or rename it if it is one of these",
        )
    return KINDS[suffix]


def load_rows(file: str, options: ReadOptions) -> list[ParsedRow]:
    """The file's records, parsed but not converted, with their columns renamed."""
    kind = file_kind(file)
    text = decode(file, read_bytes(file))
    if not text.strip():
        raise DataError("empty file", file=file, expected="at least one record")
    if kind == "txt":
        return text_rows(file, text, options.text_unit)
    start = text.lstrip()[0]
    if start == "[":
        rows = array_rows(file, text)
    elif start == "{":
        rows = jsonl_rows(file, text, kind)
    else:
        raise DataError(
            f"starts with {start!r}", file=file, line=1, expected="a JSON array '[' or JSON Lines objects '{'"
        )
    if options.columns:
        columns = options.columns
        rows = [(source, rename_columns(row, columns) if isinstance(row, dict) else row) for source, row in rows]
    return rows


def read_bytes(file: str) -> bytes:
    try:
        data = Path(file).read_bytes()
        return gzip.decompress(data) if file.lower().endswith(".gz") else data
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(f"not a valid gzip file: {error}", file=file) from None
    except OSError as error:
        raise DataError(f"cannot read: {error.strerror or error}", file=file) from None


def decode(file: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        where = " of the decompressed data" if file.lower().endswith(".gz") else ""
        raise DataError(
            f"not UTF-8: byte 0x{data[error.start]:02x} at byte offset {error.start}{where}",
            file=file,
            line=line,
            expected="UTF-8 text",
            hint=f"convert it, e.g. iconv -f GBK -t UTF-8 {file} > fixed{Path(file).suffix}",
        ) from None
    return text.removeprefix("\ufeff")


def split_lines(text: str) -> list[str]:
    """Lines ended by \\n, \\r\\n or a lone \\r (some files use old Mac endings); raw \\r cannot occur in JSON."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def text_rows(file: str, text: str, unit: str) -> list[ParsedRow]:
    if unit == "file":
        return [(Source(file), {"text": text})]
    lines = split_lines(text)
    return [(Source(file, line=number), {"text": line}) for number, line in enumerate(lines, 1) if line.strip()]


def array_rows(file: str, text: str) -> list[ParsedRow]:
    try:
        value = json.loads(text)
    except RecursionError:
        raise DataError(too_deep(), file=file, expected="a JSON array of records") from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"not valid JSON: {json_problem(error)}",
            file=file,
            line=error.lineno,
            expected="a JSON array of records",
            hint="the whole file is one JSON array, so a broken record cannot be skipped: fix it at that position",
        ) from None
    if not value:
        raise DataError("the JSON array is empty", file=file, expected="at least one record")
    return [(Source(file, index=index), row) for index, row in enumerate(value)]


def jsonl_rows(file: str, text: str, kind: str) -> list[ParsedRow]:
    reject_single_object(file, text, kind)
    rows: list[ParsedRow] = []
    for number, line in enumerate(split_lines(text), 1):
        if not line or line.isspace():
            continue
        source = Source(file, line=number)
        try:
            rows.append((source, json.loads(line)))
        except RecursionError:
            rows.append((source, DataError(too_deep(), file=file, line=number, expected="one JSON object per line")))
        except json.JSONDecodeError as error:
            message = f"malformed JSON: {json_problem(error)}"
            rows.append((source, DataError(message, file=file, line=number, expected="one JSON object per line")))
    return rows


def too_deep() -> str:
    return "JSON nested too deeply to parse (more levels than Python's recursion limit)"


def reject_single_object(file: str, text: str, kind: str) -> None:
    """A .json file holding one object, or one object spread over several lines, is not a data file."""
    try:
        value = json.loads(text)  # JSON Lines fails fast, at the end of its first record
    except (json.JSONDecodeError, RecursionError):  # the per-line parse reports what is wrong
        return
    several_lines = len([line for line in split_lines(text.strip()) if line.strip()]) > 1
    if kind == "jsonl" and not several_lines:
        return  # JSON Lines with one record
    lists = [key for key, item in value.items() if isinstance(item, list) and item and isinstance(item[0], dict)]
    inside = f"; its records may be the list in field '{lists[0]}': save that list instead" if lists else ""
    raise DataError(
        "holds a single JSON object, not records",
        file=file,
        expected="a JSON array [{...}, {...}] or JSON Lines (one object per line)",
        hint="save one record as [{...}] or as a one-line .jsonl file" + inside,
    )


def pick_format(file: str, rows: list[ParsedRow], requested: str) -> Format:
    if file_kind(file) == "txt":
        if requested not in ("auto", "text"):
            raise DataError(
                f"a .txt file is plain text, but the format is '{requested}'",
                file=file,
                hint=f"save '{requested}' records as .json or .jsonl, or use format: text",
            )
        return FORMATS.get("text")
    if requested != "auto":
        return FORMATS.get(requested)
    return detect_format(file, rows)


def detect_format(file: str, rows: list[ParsedRow]) -> Format:
    """The one format the first records agree on; records no format recognises are left to fail later."""
    found: dict[str, Source] = {}
    objects = [(source, row) for source, row in rows[: SNIFF_ROWS * 5] if isinstance(row, dict)][:SNIFF_ROWS]
    for source, row in objects:
        name = next((fmt.name for fmt in FORMATS if fmt.sniff(row)), None)
        if name is not None:
            found.setdefault(name, source)
    if len(found) == 1:
        return FORMATS.get(next(iter(found)))
    expected = "records of one format: " + "; ".join(f"{fmt.name} ({', '.join(fmt.fields)})" for fmt in FORMATS)
    advice = "set format (--format NAME), and map other field names with columns, e.g. {instruction: question}"
    if found:
        seen = ", ".join(f"{name} at {source}" for name, source in found.items())
        raise DataError("records look like different formats", file=file, expected=expected, hint=f"{seen}; {advice}")
    fields = ", ".join(objects[0][1]) if objects else "none of the first records is a JSON object"
    hint = f"the first record's fields: {fields}; {advice}"
    raise DataError("cannot tell the data format", file=file, expected=expected, hint=hint)


def check_columns(fmt: Format, columns: dict[str, str], file: str) -> None:
    unknown = [key for key in columns if key not in fmt.fields]
    if unknown:
        raise DataError(
            f"columns maps '{unknown[0]}', which is not a field of format '{fmt.name}'",
            file=file,
            field="columns",
            expected="keys among " + ", ".join(fmt.fields),
            hint=did_you_mean(unknown[0], list(fmt.fields)),
        )
