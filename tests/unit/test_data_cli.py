"""`tunellm data convert|stats|preview` as a user runs them."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunellm.cli.main import app
from tunellm.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
GOOD = FIXTURES / "alpaca" / "good.jsonl"
FAULTS = FIXTURES / "alpaca" / "faults.jsonl"
DESCRIBE_KEYS = ["count", "mean", "std", "min", "25%", "50%", "75%", "90%", "max"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def good_rows() -> int:
    return sum(1 for line in GOOD.read_text(encoding="utf-8").splitlines() if line.strip())


def test_convert_writes_normalized_messages(tmp_path):
    out = tmp_path / "out" / "data.jsonl"
    result = invoke("data", "convert", str(GOOD), "-o", str(out))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == good_rows()
    assert rows[0]["messages"][0] == {"role": "user", "content": "Name a primary colour."}
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "Red."}
    assert not list(out.parent.glob(".*tmp"))  # written atomically: no staging file left


def test_converted_file_reads_back_identically(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    invoke("data", "convert", str(GOOD), "-o", str(first))
    invoke("data", "convert", str(first), "-o", str(second))
    assert first.read_text(encoding="utf-8") == second.read_text(encoding="utf-8")


def test_convert_fails_on_bad_record_naming_file_and_line(tmp_path):
    result = CliRunner().invoke(app, ["data", "convert", str(FAULTS), "-o", str(tmp_path / "x.jsonl")])
    assert result.exit_code != 0
    assert not (tmp_path / "x.jsonl").exists()


def test_convert_skip_bad_counts_and_lists(tmp_path):
    out = tmp_path / "x.jsonl"
    result = invoke("data", "convert", str(FAULTS), "-o", str(out), "--skip-bad")
    assert result.exit_code == 0, result.output
    written = len(out.read_text(encoding="utf-8").splitlines())
    assert f"read {written} of" in result.output and "skipped" in result.output
    assert f"{FAULTS}, line 2:" in result.output  # each skipped record is listed with its file and line


def test_stats_json_has_the_promised_keys(tmp_path):
    png = tmp_path / "lengths.png"
    result = invoke("data", "stats", str(GOOD), "--json", "--histogram", str(png), "cutoff_len=16")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["format"] == "alpaca"
    assert stats["rows"] == good_rows() and stats["bad_rows"] == 0
    for part in ("prompt_tokens", "response_tokens"):
        assert list(stats[part]) == DESCRIBE_KEYS
        assert stats[part]["count"] == good_rows()
        assert stats[part]["min"] <= stats[part]["50%"] <= stats[part]["max"]
    assert stats["truncated"] >= 1  # cutoff_len=16 cuts the longer rows
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_counts_bad_rows_with_skip_bad(tmp_path):
    result = invoke("data", "stats", str(FAULTS), "--json", "--skip-bad", "--histogram", str(tmp_path / "h.png"))
    stats = json.loads(result.stdout)
    total = sum(1 for line in FAULTS.read_text(encoding="utf-8").splitlines() if line.strip())
    assert stats["bad_rows"] > 0
    assert stats["rows"] + stats["bad_rows"] == total
    assert len(stats["bad"]) == stats["bad_rows"]


def test_preview_marks_trained_and_masked_tokens():
    result = invoke("data", "preview", str(GOOD), "-n", "1", "--template", "alpaca")
    assert result.exit_code == 0, result.output
    assert "[[Red." in result.stdout  # the response is trained (bracketed without colour)
    assert "Name a primary colour." in result.stdout
    assert "[[### Instruction" not in result.stdout  # the prompt is masked


@pytest.mark.parametrize("bad", ["cutoff_len=0", "data.formt=alpaca"])
def test_bad_override_is_a_config_error(bad):
    result = CliRunner().invoke(app, ["data", "stats", str(GOOD), bad])
    assert result.exit_code != 0


def test_convert_refuses_to_write_an_empty_file_when_every_record_was_skipped(tmp_path):
    """Found by tests/unit/test_fuzz_data.py: it wrote an empty .jsonl that every later command rejects."""
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "q", "history": []}\n{"instruction": "q", "output": ""}\n')
    out = tmp_path / "x.jsonl"
    result = CliRunner().invoke(app, ["data", "convert", str(data), "-o", str(out), "--skip-bad", "-f", "alpaca"])
    assert isinstance(result.exception, DataError) and "no record left to write: all 2 were skipped" in str(
        result.exception
    )
    assert result.exception.file == str(data) and not out.exists()
