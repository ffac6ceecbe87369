"""The Label page (needs gradio): open a data file (or start one), page and search its records, edit them in forms
that fit the format, accept, reject, add, delete, undo, and export a training file. Every change goes to the
label store at once; an edit names the version it was made on, so another tab's change is never
silently overwritten (see `tunellm.ui.store`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from tunellm.data.formats import FORMATS
from tunellm.errors import TunellmError
from tunellm.ui.paths import data_files, inside, shown
from tunellm.ui.records import (
    BLANK,
    CHOICES,
    EXPORT_AS,
    PROMPT,
    QUERY,
    RESPONSE,
    TRIPLE_COLUMNS,
    TURNS,
    Form,
    check_row,
    export_rows,
    form_from_row,
    row_from_form,
    visible,
)
from tunellm.ui.store import STATUSES, Conflict, LabelStore, Record

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

    def export(self, tab: Tab, path: str, export_as: str, include_rejected: bool) -> str:
        if tab.dataset is None:
            raise TunellmError("open a file first")
        out = inside(self.root, path)
        count = export_rows(list(self.store.rows(tab.dataset, include_rejected)), tab.format, out, export_as)
        return f"wrote {count:,} records to {shown(self.root, out)}"


def record_source(record: Record) -> Any:
    from tunellm.data.record import Source

    return Source(f"record {record.position + 1}")


FORM_BOXES = ("prompt", "query", "response", "label", "triples", "choices", "turns", "extra")


def form_updates(fmt: str, record: Record | None) -> list[Any]:
    """Values, labels and visibility of the form's boxes for this record."""
    if record is None:
        return [gr.update(value=None if box == "triples" else "", visible=False) for box in FORM_BOXES]
    form = form_from_row(fmt, record.data)
    show = visible(fmt, form) | {"extra": True}
    labels = {
        "prompt": PROMPT.get(fmt, ""),
        "query": QUERY.get(fmt, ""),
        "response": RESPONSE.get(fmt, ""),
        "label": "class label (writes target as a one-label list)",
        "triples": "extraction triples (write target as fenced JSON)",
        "choices": f"{CHOICES.get(fmt, '')}, one per line",
        "turns": f"{TURNS.get(fmt, '')} (JSON)",
        "extra": "other fields (JSON object)",
    }
    updates = []
    for box in FORM_BOXES:
        value = getattr(form, box)
        updates.append(gr.update(value=value, label=labels[box], visible=show[box]))
    return updates


def build(page: LabelPage, demo: Any) -> None:
    """The page's components and events, inside the open gradio Blocks `demo`."""
    tab = gr.State(Tab())
    with gr.Row():
        files = gr.Dropdown(
            data_files(page.root), label="Data file (under the root folder)", allow_custom_value=True, scale=4
        )
        fmt = gr.Dropdown(["auto", *FORMATS.names()], value="auto", label="Format (to start a new file)", scale=1)
        open_button = gr.Button("Open / start", variant="primary", scale=0, elem_id="label-open")
    opened = gr.Markdown(elem_id="label-opened")
    with gr.Row():
        query = gr.Textbox(label="Search", scale=3, elem_id="label-search")
        status_filter = gr.Dropdown(["all", *STATUSES], value="all", label="Status", scale=1)
        previous = gr.Button("◀ Previous", scale=0)
        following = gr.Button("Next ▶", scale=0)
    where = gr.Markdown()
    rows = gr.Dataframe(
        headers=["#", "status", "record"], interactive=False, wrap=True, elem_id="label-table", max_height=320
    )
    current = gr.Markdown(elem_id="label-current")
    boxes = [
        gr.Textbox(lines=3, elem_id="label-prompt", visible=False),
        gr.Textbox(lines=2, elem_id="label-query", visible=False),
        gr.Textbox(lines=4, elem_id="label-response", visible=False),
        gr.Textbox(elem_id="label-label", visible=False),
        gr.Dataframe(headers=TRIPLE_COLUMNS, interactive=True, visible=False, type="array", column_count=5),
        gr.Textbox(lines=3, visible=False),
        gr.Code(language="json", visible=False),
        gr.Code(language="json", visible=False),
    ]
    with gr.Row():
        save = gr.Button("Save", variant="primary", elem_id="label-save")
        accept = gr.Button("Accept", elem_id="label-accept")
        reject = gr.Button("Reject", elem_id="label-reject")
        add = gr.Button("Add record", elem_id="label-add")
        delete = gr.Button("Delete", variant="stop", elem_id="label-delete")
        undo = gr.Button("Undo my last change", elem_id="label-undo")
    message = gr.Markdown(elem_id="label-message")
    with gr.Row(visible=False) as conflict_row:
        keep_mine = gr.Button("Keep mine (overwrite theirs)", elem_id="label-keep-mine")
        take_theirs = gr.Button("Take theirs (discard mine)", elem_id="label-take-theirs")
    with gr.Row():
        export_path = gr.Textbox(
            label="Export to (.json / .jsonl, optionally .gz)", scale=3, elem_id="label-export-path"
        )
        export_as = gr.Dropdown(list(EXPORT_AS), value="same", label="As", scale=1)
        with_rejected = gr.Checkbox(False, label="Include rejected", scale=1)
        export = gr.Button("Export", scale=0, elem_id="label-export")

    listing = [tab, rows, where]
    shown_record = [current, *boxes]

    def show(tab_value: Tab, record: Record | None) -> list[Any]:
        if record is None:
            return ["", *form_updates(tab_value.format, None)]
        head = f"**Record {record.position + 1}** · {record.status} · version {record.version}"
        return [head + (" · deleted" if record.deleted else ""), *form_updates(tab_value.format, record)]

    def refresh(tab_value, text, status):
        return page.table(tab_value, text, status)

    def do_open(tab_value, path, chosen):
        try:
            tab_value, note = page.open(tab_value, path or "", chosen)
        except TunellmError as error:
            return [tab_value, gr.skip(), gr.skip(), f"**Error:** {error}", gr.skip(), *show(tab_value, None)]
        tab_value, table_rows, place = page.table(tab_value, "", "all")
        return [tab_value, table_rows, place, note, path, *show(tab_value, None)]

    # the file a browser had open is kept in its localStorage (a path, nothing more), so a reload reopens it
    remember = "(path) => { if (path) localStorage.setItem('tunellm-label-file', path); }"
    open_event = open_button.click(do_open, [tab, files, fmt], [*listing, opened, files, *shown_record])
    open_event.then(None, files, None, js=remember)

    def reopen(tab_value, remembered):  # gradio 6.31's BrowserState reaches load events empty, hence plain JS
        if not remembered:
            return [tab_value, gr.skip(), gr.skip(), "", gr.skip(), *show(tab_value, None)]
        return do_open(tab_value, remembered, "auto")

    recall = "(tab, path) => [tab, localStorage.getItem('tunellm-label-file') || '']"
    demo.load(reopen, [tab, files], [*listing, opened, files, *shown_record], js=recall)

    def move(tab_value, text, status, step):
        if step > 0 and len(tab_value.ids) == PAGE:
            last = page.store.get(tab_value.ids[-1]).position
            tab_value.pages.append(last)
        elif step < 0 and len(tab_value.pages) > 1:
            tab_value.pages.pop()
        return page.table(tab_value, text, status)

    previous.click(lambda t, q, s: move(t, q, s, -1), [tab, query, status_filter], listing)
    following.click(lambda t, q, s: move(t, q, s, 1), [tab, query, status_filter], listing)

    def search(tab_value, text, status):
        tab_value.pages = [-1]
        return page.table(tab_value, text, status)

    query.submit(search, [tab, query, status_filter], listing)
    status_filter.change(search, [tab, query, status_filter], listing)

    def select(tab_value, event: gr.SelectData):
        row = event.index[0] if isinstance(event.index, list | tuple) else event.index
        if tab_value.dataset is None or row >= len(tab_value.ids):
            return [tab_value, *show(tab_value, None), "", gr.update(visible=False)]
        tab_value, record = page.load(tab_value, tab_value.ids[row])
        return [tab_value, *show(tab_value, record), "", gr.update(visible=False)]

    rows.select(select, [tab], [tab, *shown_record, message, conflict_row])

    def after_change(tab_value, record, note, text, status, conflict=False):
        tab_value, table_rows, place = page.table(tab_value, text, status)
        return [tab_value, table_rows, place, *show(tab_value, record), note, gr.update(visible=conflict)]

    change_outputs = [*listing, *shown_record, message, conflict_row]
    unchanged = [gr.skip()] * (len(change_outputs) - 3)  # all but the tab, the message and the conflict row

    def do_save(tab_value, text, status, *values, overwrite=False):
        form = Form(*values)
        try:
            tab_value, record, note = page.save(tab_value, form, overwrite)
        except Conflict as error:
            theirs = form_from_row(tab_value.format, error.current.data)
            detail = "; ".join(f"{box}: {getattr(theirs, box)!r}" for box in FORM_BOXES if getattr(theirs, box))
            note = f"**Conflict:** {error}. Theirs: {detail[:600]}. Your text is still in the form."
            tab_value.version = error.current.version  # "keep mine" saves over the version just shown
            return [tab_value, *unchanged, note, gr.update(visible=True)]
        except TunellmError as error:
            return [tab_value, *unchanged, f"**Error:** {error}", gr.skip()]
        return after_change(tab_value, record, note, text, status)

    form_inputs = [tab, query, status_filter, *boxes]
    save.click(do_save, form_inputs, change_outputs)
    keep_mine.click(lambda *a: do_save(*a, overwrite=True), form_inputs, change_outputs)

    def simple(action):
        def run(tab_value, text, status):
            if tab_value.record is None and action not in ("add", "undo"):
                return [tab_value, gr.skip(), gr.skip(), *show(tab_value, None), "open a record first", gr.skip()]
            try:
                if action == "add":
                    tab_value, record = page.add(tab_value)
                    note = "added a record at the end"
                elif action == "undo":
                    undone = page.store.undo(tab_value.dataset, tab_value.session) if tab_value.dataset else None
                    if undone is None:
                        return [tab_value, *unchanged, "nothing to undo", gr.skip()]
                    tab_value, record = page.load(tab_value, undone.id)
                    note = f"undid your last change to record {record.position + 1}"
                elif action == "theirs":
                    tab_value, record = page.load(tab_value, tab_value.record)
                    note = "loaded their version"
                elif action == "delete":
                    record = page.store.delete(tab_value.record, tab_value.version, tab_value.session)
                    tab_value, record = page.load(tab_value, record.id)
                    note = "deleted (undo brings it back)"
                else:
                    record = page.store.set_status(tab_value.record, action, tab_value.version, tab_value.session)
                    tab_value, record = page.load(tab_value, record.id)
                    note = f"marked {action}"
            except Conflict as error:
                tab_value, record = page.load(tab_value, error.current.id)
                note = f"**Conflict:** {error}; showing the latest version"
                return after_change(tab_value, record, note, text, status)
            return after_change(tab_value, record, note, text, status)

        return run

    actions = {
        accept: "accepted",
        reject: "rejected",
        add: "add",
        delete: "delete",
        undo: "undo",
        take_theirs: "theirs",
    }
    for button, action in actions.items():
        button.click(simple(action), [tab, query, status_filter], change_outputs)

    def do_export(tab_value, path, as_format, rejected):
        try:
            return page.export(tab_value, path, as_format, rejected)
        except TunellmError as error:
            return f"**Error:** {error}"

    export.click(do_export, [tab, export_path, export_as, with_rejected], message)
