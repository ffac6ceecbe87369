"""The label store: records of data files in SQLite (WAL mode), one version per record, every change saved at once.

A file is imported once (its rows parsed by tunellm's own reader) and then paged from the database,
so a 52k-row file opens in the time of one SELECT. Every change is one transaction: an update names
the version it was made on (optimistic concurrency), so two browser tabs editing different records
both keep their changes, and two edits of the same record cannot silently overwrite each other: the
second one merges field by field when the two touched different fields, else raises `Conflict`.
Each change is logged with the state before it, so a tab can undo its own last change.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunellm.data.formats import ReadOptions
from tunellm.data.read import load_rows, pick_format
from tunellm.errors import DataError

STATUSES = ("new", "accepted", "rejected")
SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, format TEXT NOT NULL, fingerprint TEXT NOT NULL,
    UNIQUE (path, fingerprint));
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY, dataset INTEGER NOT NULL REFERENCES datasets(id), position INTEGER NOT NULL,
    data TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'new', deleted INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS records_page ON records (dataset, position);
CREATE INDEX IF NOT EXISTS records_count ON records (dataset, deleted, status);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY, dataset INTEGER NOT NULL, record INTEGER NOT NULL, session TEXT NOT NULL,
    kind TEXT NOT NULL, before TEXT, after_version INTEGER NOT NULL, undone INTEGER NOT NULL DEFAULT 0);
"""


@dataclass(frozen=True)
class Dataset:
    id: int
    path: str
    format: str


@dataclass(frozen=True)
class Record:
    id: int
    position: int
    data: dict[str, Any]
    status: str
    version: int
    deleted: bool = False


class Conflict(Exception):
    """The record changed in another tab since this one loaded it, in the same fields."""

    def __init__(self, current: Record, fields: list[str]) -> None:
        self.current = current
        self.fields = fields
        what = ", ".join(fields) or "status or deletion"
        super().__init__(f"record {current.position + 1} was changed elsewhere (now version {current.version}): {what}")


def fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


class LabelStore:
    """One SQLite file; safe to share between threads and processes (each thread has its own connection)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().executescript(SCHEMA)  # IF NOT EXISTS: safe when several processes open the store

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed change survives a power cut, not only a crash
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")  # writers queue here; readers keep reading the last commit
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ---- datasets
    def open_file(self, path: str | Path, format: str = "auto") -> Dataset:
        """The file's dataset, importing it on first use (or when the file changed on disk)."""
        file = Path(path).resolve()
        if not file.is_file():
            raise DataError("file not found", file=str(file))
        mark = fingerprint(file)
        row = (
            self._connection()
            .execute("SELECT id, path, format FROM datasets WHERE path = ? AND fingerprint = ?", (str(file), mark))
            .fetchone()
        )
        if row:
            return Dataset(*row)
        rows = load_rows(str(file), ReadOptions())
        fmt = pick_format(str(file), rows, format).name
        for source, value in rows:
            if isinstance(value, DataError):
                raise value
            if not isinstance(value, dict):
                raise DataError("record is not a JSON object", file=source.file, line=source.line, index=source.index)
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO datasets (path, format, fingerprint) VALUES (?, ?, ?)", (str(file), fmt, mark)
            )
            dataset = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO records (dataset, position, data) VALUES (?, ?, ?)",
                (
                    (dataset, position, json.dumps(value, ensure_ascii=False))
                    for position, (_, value) in enumerate(rows)
                ),
            )
        return Dataset(dataset, str(file), fmt)

    def new_dataset(self, path: str | Path, format: str) -> Dataset:
        """An empty dataset for a file that does not exist yet (records are added, then exported to it)."""
        file = Path(path).resolve()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO datasets (path, format, fingerprint) VALUES (?, ?, 'new')", (str(file), format)
            )
            found = db.execute("SELECT id FROM datasets WHERE path = ? AND fingerprint = 'new'", (str(file),))
            dataset = int(cursor.lastrowid or 0) if cursor.rowcount else found.fetchone()[0]
        return Dataset(dataset, str(file), format)

    def dataset(self, dataset_id: int) -> Dataset:
        row = self._connection().execute("SELECT id, path, format FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        if row is None:
            raise KeyError(f"no dataset {dataset_id}")
        return Dataset(*row)

    # ---- reading
    def _where(self, dataset: int, query: str, status: str) -> tuple[str, list[Any]]:
        where, params = "dataset = ? AND deleted = 0", [dataset]
        if query:
            where += " AND instr(lower(data), lower(?)) > 0"
            params.append(query)
        if status != "all":
            where += " AND status = ?"
            params.append(status)
        return where, params

    def count(self, dataset: int, query: str = "", status: str = "all") -> int:
        where, params = self._where(dataset, query, status)
        return int(self._connection().execute(f"SELECT count(*) FROM records WHERE {where}", params).fetchone()[0])

    def page(
        self, dataset: int, *, after: int = -1, limit: int = 20, query: str = "", status: str = "all"
    ) -> list[Record]:
        """Up to `limit` records with position > `after` (keyset paging: as fast on the last page as the first)."""
        where, params = self._where(dataset, query, status)
        rows = self._connection().execute(
            f"SELECT id, position, data, status, version, deleted FROM records WHERE {where} AND position > ? "
            "ORDER BY position LIMIT ?",
            [*params, after, limit],
        )
        return [_record(row) for row in rows]

    def get(self, record_id: int) -> Record:
        row = (
            self._connection()
            .execute("SELECT id, position, data, status, version, deleted FROM records WHERE id = ?", (record_id,))
            .fetchone()
        )
        if row is None:
            raise KeyError(f"no record {record_id}")
        return _record(row)

    def rows(self, dataset: int, include_rejected: bool = False) -> Iterator[dict[str, Any]]:
        """The records to export, in order: not deleted, and not rejected unless asked."""
        skip = "" if include_rejected else " AND status != 'rejected'"
        query = f"SELECT data FROM records WHERE dataset = ? AND deleted = 0{skip} ORDER BY position"
        for (data,) in self._connection().execute(query, (dataset,)):
            yield json.loads(data)

    # ---- changes
    def update(
        self, record_id: int, data: dict[str, Any], version: int, session: str, base: dict[str, Any] | None = None
    ) -> Record:
        """Save `data` as the record's new content, made on `version`.

        If the record has moved on since, and `base` (the content this tab loaded) is given, the fields this
        tab changed are applied over the newer content when the other change touched none of them;
        otherwise `Conflict` is raised and nothing is written.
        """
        with self._transaction() as db:
            current = _current(db, record_id)
            if current.deleted:
                raise Conflict(current, [])
            if current.version != version:
                data = _merge(current, data, base)
            return _write(db, current, session, "edit", data=data)

    def set_status(self, record_id: int, status: str, version: int, session: str) -> Record:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        with self._transaction() as db:
            current = _current(db, record_id)
            if current.deleted or current.version != version:
                raise Conflict(current, [])  # changed elsewhere since this tab loaded it: look again first
            return _write(db, current, session, "status", status=status)

    def delete(self, record_id: int, version: int, session: str) -> Record:
        with self._transaction() as db:
            current = _current(db, record_id)
            if current.version != version:
                raise Conflict(current, [])
            return _write(db, current, session, "delete", deleted=True)

    def add(self, dataset: int, data: dict[str, Any], session: str) -> Record:
        """A new record at the end."""
        with self._transaction() as db:
            end = "SELECT coalesce(max(position), -1) + 1 FROM records WHERE dataset = ?"
            position = db.execute(end, (dataset,)).fetchone()[0]
            cursor = db.execute(
                "INSERT INTO records (dataset, position, data) VALUES (?, ?, ?)",
                (dataset, position, json.dumps(data, ensure_ascii=False)),
            )
            record = _current(db, int(cursor.lastrowid or 0))
            db.execute(
                "INSERT INTO changes (dataset, record, session, kind, before, after_version) "
                "VALUES (?, ?, ?, 'add', NULL, 1)",
                (dataset, record.id, session),
            )
            return record

    def undo(self, dataset: int, session: str) -> Record | None:
        """Undo this session's last change not yet undone; None when there is none.

        A change that another session has built on since (the record's version moved) is not undone:
        `Conflict` names the record, so no one's later edit is lost.
        """
        with self._transaction() as db:
            change = db.execute(
                "SELECT id, record, kind, before, after_version FROM changes WHERE dataset = ? AND session = ? "
                "AND undone = 0 ORDER BY id DESC LIMIT 1",
                (dataset, session),
            ).fetchone()
            if change is None:
                return None
            change_id, record_id, kind, before, after_version = change
            current = _current(db, record_id)
            if current.version != after_version:
                raise Conflict(current, [])
            db.execute("UPDATE changes SET undone = 1 WHERE id = ?", (change_id,))
            if kind == "add":
                fields = {"deleted": True}
            else:
                old = json.loads(before)
                fields = {"data": old["data"], "status": old["status"], "deleted": old["deleted"]}
            return _write(db, current, None, kind, **fields)


def _record(row: tuple[Any, ...]) -> Record:
    record_id, position, data, status, version, deleted = row
    return Record(record_id, position, json.loads(data), status, version, bool(deleted))


def _current(db: sqlite3.Connection, record_id: int) -> Record:
    row = db.execute(
        "SELECT id, position, data, status, version, deleted FROM records WHERE id = ?", (record_id,)
    ).fetchone()
    if row is None:
        raise KeyError(f"no record {record_id}")
    return _record(row)


def _merge(current: Record, mine: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    """`current` plus the fields this tab changed from `base`; Conflict when the other change touched any of them."""
    if base is None:
        raise Conflict(current, sorted(set(mine) | set(current.data)))
    keys = set(mine) | set(base) | set(current.data)
    changed_here = {key for key in keys if mine.get(key, _MISSING) != base.get(key, _MISSING)}
    changed_there = {key for key in keys if current.data.get(key, _MISSING) != base.get(key, _MISSING)}
    clash = sorted(key for key in changed_here & changed_there if mine.get(key) != current.data.get(key))
    if clash:
        raise Conflict(current, clash)
    merged = dict(current.data)
    for key in changed_here:
        if key in mine:
            merged[key] = mine[key]
        else:
            merged.pop(key, None)
    return merged


_MISSING = object()


def _write(db: sqlite3.Connection, current: Record, session: str | None, kind: str, **fields: Any) -> Record:
    """Apply the fields, bump the version, and (unless undoing) log the state before for undo."""
    data = fields.get("data", current.data)
    status = fields.get("status", current.status)
    deleted = fields.get("deleted", current.deleted)
    version = current.version + 1
    db.execute(
        "UPDATE records SET data = ?, status = ?, deleted = ?, version = ? WHERE id = ?",
        (json.dumps(data, ensure_ascii=False), status, int(deleted), version, current.id),
    )
    if session is not None:
        before = {"data": current.data, "status": current.status, "deleted": current.deleted}
        dataset = db.execute("SELECT dataset FROM records WHERE id = ?", (current.id,)).fetchone()[0]
        db.execute(
            "INSERT INTO changes (dataset, record, session, kind, before, after_version) VALUES (?, ?, ?, ?, ?, ?)",
            (dataset, current.id, session, kind, json.dumps(before, ensure_ascii=False), version),
        )
    return Record(current.id, current.position, data, status, version, bool(deleted))
