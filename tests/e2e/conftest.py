"""The installed CLI, its environment, and alpaca rows: with the tiny llama, `tunellm train` runs in seconds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """One thread per run: runs go side by side on 2 shared cores, and one thread count gives one float result."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def tunellm_command() -> list[str]:
    """The installed console script, as a user runs it (`python -m tunellm` where it is not installed)."""
    script = Path(sys.executable).with_name("tunellm")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tunellm"]


def alpaca_rows(n: int) -> list[dict[str, str]]:
    """Arithmetic questions of varied lengths, with and without an input field."""
    rows = []
    for i in range(n):
        a, b = 3 * i + 1, 7 * i + 2
        extra = " Think step by step and answer in one short sentence." * (i % 3)
        rows.append({"instruction": f"Add the two numbers.{extra}", "input": f"{a} and {b}", "output": f"{a + b}."})
    return rows


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in alpaca_rows(24)), encoding="utf-8")
    return path
