"""Write files so that a reader finds the old content or the new, never a part of it.

The content goes to a temporary file beside the target, is flushed to disk, and is renamed over the
target; then the folder is synced so that the rename itself survives a crash. Checkpoint folders use
`fsync_path` the same way before their rename.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk; a folder where the OS cannot is skipped."""
    if path.is_dir() and not hasattr(os, "O_DIRECTORY"):
        return  # folders cannot be opened for fsync on Windows
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(mask)
    return mask


def usual_permissions(folder: Path) -> None:
    """Give `folder` and everything in it the modes a plain `open` or `mkdir` gives (0666 or 0777 less the umask):
    `tempfile.mkdtemp` makes 0700 folders and safetensors writes 0600 files (through a temporary file of its own),
    which would leave a merged model or a converted one readable by its owner only."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit it replaces `path`, on an error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # `.*.tmp`: the cache sweeps stale ones
    try:
        with open(temporary, mode, encoding=None if "b" in mode else "utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    with suppress(OSError):
        fsync_path(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_open(path) as file:
        file.write(json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False) + "\n")


def write_jsonl_atomic(path: Path, rows: Any) -> None:
    with atomic_open(path) as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_folder_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """`build(staging)` fills a temporary folder beside `target`, which is then renamed into place: a killed build
    leaves no half-written `target`. Where another process finished the same folder first, its copy is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        build(staging)
        try:
            usual_permissions(staging)
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # another process won the race only if it finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
