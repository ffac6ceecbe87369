"""Property-based fault test of every data reader and of `tunellm data convert`: generated and mutated records
and files (wrong types, missing fields, broken UTF-8, huge strings, deep nesting, empty files, BOMs).

The property: nothing fails except with tunellm's DataError naming the file (and, for a record, its line or
index); with skip_bad, read + skipped == total, and every skipped record names its place. Bounded: a few hundred
examples per test, derandomized, so CI runs the same cases; the figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import copy
import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tunellm.cli.main import app
from tunellm.data.formats import FORMATS, ReadOptions
from tunellm.data.read import read_conversations
from tunellm.errors import DataError

FORMAT_NAMES = [fmt.name for fmt in FORMATS]
SEEDS = [(fmt.name, row) for fmt in FORMATS for row in fmt.examples]
SETTINGS = settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", " ", "\u3000", "问题：你好", "\ufeff", "{{name}}", "\r\n", "a" * 200_000, "\x00"]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
FIGURES: dict[str, Counter] = {}
DEEP = "<deep nesting>"  # replaced in the file's bytes by 3,000 nested lists (json.dumps itself would recurse)
DEEP_JSON = ("[" * 3000 + '"x"' + "]" * 3000).encode()


def deep(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value (down to depth 8): keys of objects, indices of lists."""
    found = [prefix]
    if len(prefix) >= 8:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*prefix, i))
    return found


@st.composite
def mutated_record(draw: st.DrawFn) -> object:
    """An example row of some format with a few places deleted, retyped, blown up or nested deeply."""
    _, seed = draw(st.sampled_from(SEEDS))
    row: object = copy.deepcopy(seed)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(paths(row)))
        if not where:
            row = draw(JSON_VALUES | st.just(DEEP))
            continue
        parent = row
        for key in where[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["delete", "value", "huge", "deep", "list", "null"]))
        last = where[-1]
        if action == "delete":
            del parent[last]
        elif action == "value":
            parent[last] = draw(JSON_VALUES)
        elif action == "huge":
            parent[last] = "长" * 300_000
        elif action == "deep":
            parent[last] = deep(50) if draw(st.booleans()) else DEEP
        else:
            parent[last] = [parent[last]] if action == "list" else None
    return row


@st.composite
def data_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file name, bytes): records as JSON Lines, a JSON array or text, then byte-level faults."""
    records = draw(st.lists(mutated_record(), max_size=5))
    kind = draw(st.sampled_from(["jsonl", "json", "txt", "jsonl.gz"]))
    if kind == "json":
        data = json.dumps(records, ensure_ascii=draw(st.booleans())).encode()
    elif kind == "txt":
        data = "\n".join(draw(TEXT) for _ in records).encode()
    else:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    data = data.replace(json.dumps(DEEP).encode(), DEEP_JSON)
    fault = draw(st.sampled_from(["none", "none", "bom", "bad utf-8", "truncate", "empty", "blank lines", "junk"]))
    if fault == "bom":
        data = b"\xef\xbb\xbf" + data
    elif fault == "bad utf-8" and data:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + data[at:]
    elif fault == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif fault == "empty":
        data = draw(st.sampled_from([b"", b"\n\n", b"   "]))
    elif fault == "blank lines":
        data = data.replace(b"\n", b"\n\r\n  \n")
    elif fault == "junk":
        data = draw(st.binary(max_size=40)) + data
    if kind.endswith(".gz"):
        data = gzip.compress(data) if draw(st.booleans()) else data[: len(data) // 2]
    return f"data.{kind}", data


def read_or_data_error(file: Path, fmt: str, skip_bad: bool) -> str:
    """Read; return what happened. Any exception but a DataError naming the file fails the test."""
    try:
        result = read_conversations([str(file)], ReadOptions(), format=fmt, skip_bad=skip_bad)
    except DataError as error:
        assert error.file == str(file), f"the error does not name the file: {error!r}"
        return "DataError"
    assert len(result.conversations) + result.skipped == result.total
    for error in result.bad:
        assert error.file == str(file) and (error.line is not None or error.index is not None), repr(error)
    if not skip_bad:
        assert result.skipped == 0
    return "read (some skipped)" if result.skipped else "read"


def print_figures(name: str) -> None:
    counts = FIGURES.get(name, Counter())
    print(f"\n{name}: {sum(counts.values())} examples: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


@SETTINGS
@given(file=data_file(), fmt=st.sampled_from(["auto", *FORMAT_NAMES]), skip_bad=st.booleans())
def test_every_reader_fails_only_with_a_data_error_naming_file_and_record(tmp_path_factory, file, fmt, skip_bad):
    name, data = file
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(data)
    outcome = read_or_data_error(path, fmt, skip_bad)
    FIGURES.setdefault("readers", Counter())[f"{outcome}{' skip_bad' if skip_bad else ''}"] += 1


def test_reader_figures():
    print_figures("readers")
    assert sum(FIGURES.get("readers", Counter()).values()) > 0


@settings(SETTINGS, max_examples=150)
@given(file=data_file(), skip_bad=st.booleans(), prediction=st.booleans())
def test_data_convert_fails_only_with_a_data_error_and_its_output_reads_back(
    tmp_path_factory, file, skip_bad, prediction
):
    name, data = file
    folder = tmp_path_factory.mktemp("convert")
    path, out = folder / name, folder / "out.jsonl"
    path.write_bytes(data)
    args = ["data", "convert", str(path), "-o", str(out), *(["--skip-bad"] if skip_bad else [])]
    result = CliRunner().invoke(app, [*args, *(["--prediction"] if prediction else [])])
    if result.exit_code != 0:  # `tunellm` (cli.main) prints a DataError without a traceback and exits 2
        error = result.exception
        assert isinstance(error, DataError), f"exit {result.exit_code}: {result.output}\n{result.exc_info}"
        assert error.file == str(path) and not out.exists(), repr(error)
        FIGURES.setdefault("convert", Counter())["DataError (exit 2)"] += 1
        return
    back = read_conversations([str(out)], ReadOptions(require_response=not prediction), format="openai")
    assert back.total == len(back.conversations) == len(out.read_text(encoding="utf-8").splitlines())
    FIGURES.setdefault("convert", Counter())["exit 0, read back"] += 1


def test_convert_figures():
    print_figures("convert")
    assert sum(FIGURES.get("convert", Counter()).values()) > 0


@pytest.mark.parametrize("depth", [50, 5000])
def test_deep_nesting_is_a_data_error(tmp_path, depth):
    nested = "[" * depth + '"x"' + "]" * depth
    files = {"a.jsonl": f'{{"instruction": {nested}, "output": "x"}}\n{{"instruction": "q", "output": "a"}}\n'}
    files |= {"b.json": "[" * depth, "c.json": f'[{{"instruction": {nested}, "output": "x"}}]'}
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        for skip_bad in (False, True):
            read_or_data_error(path, "auto", skip_bad)
