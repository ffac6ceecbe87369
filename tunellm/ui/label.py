"""The Label page's logic (its gradio layout is `label_view`): open a data file (or start one), page and
search its records, edit them in forms that fit the format, accept, reject, add, delete, undo, and
export a training file. Every change goes to the label store at once; an edit names the version it was
made on, so another tab's change is never silently overwritten (see `tunellm.ui.store`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunellm.errors import TunellmError
from tunellm.ui.paths import inside, shown
from tunellm.ui.records import (
    BLANK,
    Form,
    check_row,
    export_rows,
    form_from_row,
    row_from_form,
)
from tunellm.ui.store import LabelStore, Record

PAGE = 20


@dataclass
class Tab:
    """What one browser tab is looking at."""

    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    dataset: int | None = None
    format: str = ""
    record: int | None = None
    version: int = 0
    base: dict[str, Any] = field(default_factory=dict)  # the record as this tab loaded it
    pages: list[int] = field(default_factory=lambda: [-1])  # the `after` position of each page seen
    ids: list[int] = field(default_factory=list)  # record ids of the rows shown


def preview(record: Record, fmt: str) -> str:
    form = form_from_row(fmt, record.data)
    text = form.prompt or form.turns
    return " ".join(text.split())[:90]


class LabelPage:
    def __init__(self, store: LabelStore, root: Path) -> None:
        self.store = store
        self.root = root

    # ---- opening and paging
    def open(self, tab: Tab, path: str, fmt: str = "auto") -> tuple[Tab, str]:
        file = inside(self.root, path)
        dataset = self.store.open_file(file, fmt) if file.exists() else None
        if dataset is None:
            if fmt == "auto":
                raise TunellmError("the file does not exist: choose its format to start a new one", file=str(file))
            dataset = self.store.new_dataset(file, fmt)
        tab = Tab(session=tab.session, dataset=dataset.id, format=dataset.format)
        return (
            tab,
            f"{shown(self.root, Path(dataset.path))}: {self.store.count(dataset.id):,} records ({dataset.format})",
        )

    def table(self, tab: Tab, query: str, status: str) -> tuple[Tab, list[list[Any]], str]:
        if tab.dataset is None:
            return tab, [], ""
        records = self.store.page(tab.dataset, after=tab.pages[-1], limit=PAGE, query=query, status=status)
        tab.ids = [record.id for record in records]
        rows = [[record.position + 1, record.status, preview(record, tab.format)] for record in records]
        total = self.store.count(tab.dataset, query, status)
        first = records[0].position + 1 if records else 0
        return tab, rows, f"page {len(tab.pages)}, from record {first} ({total:,} match)"

    def load(self, tab: Tab, record_id: int) -> tuple[Tab, Record]:
        record = self.store.get(record_id)
        tab.record, tab.version, tab.base = record.id, record.version, record.data
        return tab, record

    # ---- changes
    def save(self, tab: Tab, form: Form, overwrite: bool = False) -> tuple[Tab, Record, str]:
        """Save the form; a record changed elsewhere in the same fields raises Conflict (nothing written)."""
        if tab.record is None:
            raise TunellmError("no record is open")
        data = row_from_form(tab.format, tab.base, form)
        base = None if overwrite else tab.base
        record = self.store.update(tab.record, data, tab.version, tab.session, base=base)
        note = "saved" if record.version == tab.version + 1 else "saved, merged with a change made in another tab"
        problem = check_row(tab.format, record.data, record_source(record))
        tab, record = self.load(tab, record.id)
        return tab, record, note + (f"; note: {problem}" if problem else "")

    def add(self, tab: Tab) -> tuple[Tab, Record]:
        if tab.dataset is None:
            raise TunellmError("open or start a file first")
        record = self.store.add(tab.dataset, dict(BLANK[tab.format]), tab.session)
        return self.load(tab, record.id)

    def act(self, tab: Tab, action: str) -> tuple[Tab, Record | None, str]:
        """accepted, rejected, delete, undo or theirs (reload the stored version); Conflict if changed elsewhere."""
        if action == "undo":
            undone = self.store.undo(tab.dataset, tab.session) if tab.dataset is not None else None
            if undone is None:
                return tab, None, "nothing to undo"
            tab, record = self.load(tab, undone.id)
            return tab, record, f"undid your last change to record {record.position + 1}"
        if tab.record is None:
            raise TunellmError("open a record first: click it in the table")
        if action == "theirs":
            tab, record = self.load(tab, tab.record)
            return tab, record, "loaded their version"
        if action == "delete":
            self.store.delete(tab.record, tab.version, tab.session)
            tab, record = self.load(tab, tab.record)
            return tab, record, "deleted (undo brings it back)"
        self.store.set_status(tab.record, action, tab.version, tab.session)
        tab, record = self.load(tab, tab.record)
        return tab, record, f"marked {action}"

    def move(self, tab: Tab, step: int) -> Tab:
        """The next (+1) or previous (-1) page of the current listing."""
        if step > 0 and len(tab.ids) == PAGE:
            tab.pages.append(self.store.get(tab.ids[-1]).position)
        elif step < 0 and len(tab.pages) > 1:
            tab.pages.pop()
        return tab

    def export(self, tab: Tab, path: str, export_as: str, include_rejected: bool) -> str:
        if tab.dataset is None:
            raise TunellmError("open a file first")
        out = inside(self.root, path)
        count = export_rows(list(self.store.rows(tab.dataset, include_rejected)), tab.format, out, export_as)
        return f"wrote {count:,} records to {shown(self.root, out)}"


def record_source(record: Record) -> Any:
    from tunellm.data.record import Source

    return Source(f"record {record.position + 1}")
