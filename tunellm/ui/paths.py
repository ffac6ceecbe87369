"""File pickers limited to one root folder: every path the page reads or writes is checked here."""

from __future__ import annotations

import os
from pathlib import Path

from tunellm.errors import ConfigError

DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".txt", ".json.gz", ".jsonl.gz", ".ndjson.gz", ".txt.gz")
SKIPPED = {".git", ".venv", "node_modules", "__pycache__", ".tunellm"}


def inside(root: Path, text: str | os.PathLike[str]) -> Path:
    """`text` (relative to `root`, or absolute) resolved, links followed; an error unless it lies under `root`."""
    root = Path(root).resolve()
    raw = str(text).strip()
    if not raw:
        raise ConfigError("no path given", expected=f"a path under {root}")
    path = (root / Path(raw).expanduser()).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(
            f"{raw} is outside the folder this page may use",
            field="path",
            expected=f"a path under {root}",
            hint="start tunellm ui with --root pointing higher to reach it",
        )
    return path


def shown(root: Path, path: Path) -> str:
    """The path as the page shows it: relative to the root."""
    return str(Path(path).resolve().relative_to(Path(root).resolve()))


def data_files(root: Path, limit: int = 500) -> list[str]:
    """Data files under `root` (relative paths, sorted), skipping hidden and tool folders."""
    root = Path(root).resolve()
    found: list[str] = []
    for folder, names, files in os.walk(root):
        names[:] = sorted(name for name in names if name not in SKIPPED and not name.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if name.lower().endswith(DATA_SUFFIXES) and root in path.resolve().parents:  # no links leading out
                found.append(str(path.relative_to(root)))
                if len(found) >= limit:
                    return found
    return found
