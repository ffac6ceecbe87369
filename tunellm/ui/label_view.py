"""The Label page's gradio layout and events; what they do is `tunellm.ui.label.LabelPage`."""

from __future__ import annotations

from functools import partial
from typing import Any

import gradio as gr

from tunellm.data.formats import FORMATS
from tunellm.errors import TunellmError
from tunellm.ui.label import LabelPage, Tab
from tunellm.ui.paths import data_files
from tunellm.ui.records import CHOICES, EXPORT_AS, PROMPT, QUERY, RESPONSE, TRIPLE_COLUMNS, TURNS, Form, form_from_row
from tunellm.ui.records import visible as visible_boxes
from tunellm.ui.store import STATUSES, Conflict, Record

FORM_BOXES = ("prompt", "query", "response", "label", "triples", "choices", "turns", "extra")
# the file a browser had open is kept in its localStorage (a path, nothing more), so a reload reopens it;
# plain JS because gradio 6.31's BrowserState reaches load events empty
REMEMBER = "(path) => { if (path) localStorage.setItem('tunellm-label-file', path); }"
RECALL = "(tab, path) => [tab, localStorage.getItem('tunellm-label-file') || '']"
ACTIONS = {"Accept": "accepted", "Reject": "rejected", "Delete": "delete", "Undo my last change": "undo"}


def form_updates(fmt: str, record: Record | None) -> list[Any]:
    """Values, labels and visibility of the form's boxes for this record."""
    if record is None:
        return [gr.update(value=None if box == "triples" else "", visible=False) for box in FORM_BOXES]
    form = form_from_row(fmt, record.data)
    show = visible_boxes(fmt, form) | {"extra": True}
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
    return [gr.update(value=getattr(form, box), label=labels[box], visible=show[box]) for box in FORM_BOXES]


def shown_record(tab: Tab, record: Record | None) -> list[Any]:
    """The record's heading and its form."""
    if record is None:
        return ["", *form_updates(tab.format, None)]
    head = f"**Record {record.position + 1}** · {record.status} · version {record.version}"
    return [head + (" · deleted" if record.deleted else ""), *form_updates(tab.format, record)]


class LabelView:
    """Builds the page inside an open gradio Blocks and wires its events to a LabelPage."""

    def __init__(self, page: LabelPage, demo: Any) -> None:
        self.page = page
        self._file_part()
        self._form_part()
        self._wire(demo)

    def _file_part(self) -> None:
        self.tab = gr.State(Tab())
        with gr.Row():
            files = data_files(self.page.root)
            label = "Data file (under the root folder)"
            self.files = gr.Dropdown(files, label=label, allow_custom_value=True, scale=4)
            formats = ["auto", *FORMATS.names()]
            self.format = gr.Dropdown(formats, value="auto", label="Format (to start a new file)", scale=1)
            self.open_button = gr.Button("Open / start", variant="primary", scale=0, elem_id="label-open")
        self.opened = gr.Markdown(elem_id="label-opened")
        with gr.Row():
            self.query = gr.Textbox(label="Search", scale=3, elem_id="label-search")
            self.status = gr.Dropdown(["all", *STATUSES], value="all", label="Status", scale=1)
            self.previous = gr.Button("◀ Previous", scale=0)
            self.following = gr.Button("Next ▶", scale=0)
        self.where = gr.Markdown()
        headers = ["#", "status", "record"]
        self.rows = gr.Dataframe(headers=headers, interactive=False, wrap=True, elem_id="label-table", max_height=320)

    def _form_part(self) -> None:
        self.current = gr.Markdown(elem_id="label-current")
        self.boxes = [
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
            self.save = gr.Button("Save", variant="primary", elem_id="label-save")
            self.add = gr.Button("Add record", elem_id="label-add")
            self.actions = {
                gr.Button(
                    text, elem_id=f"label-{action}", variant="stop" if action == "delete" else "secondary"
                ): action
                for text, action in ACTIONS.items()
            }
        self.message = gr.Markdown(elem_id="label-message")
        with gr.Row(visible=False) as self.conflict_row:
            self.keep_mine = gr.Button("Keep mine (overwrite theirs)", elem_id="label-keep-mine")
            self.actions[gr.Button("Take theirs (discard mine)", elem_id="label-take-theirs")] = "theirs"
        with gr.Row():
            label = "Export to (.json / .jsonl, optionally .gz)"
            self.export_path = gr.Textbox(label=label, scale=3, elem_id="label-export-path")
            self.export_as = gr.Dropdown(list(EXPORT_AS), value="same", label="As", scale=1)
            self.with_rejected = gr.Checkbox(False, label="Include rejected", scale=1)
            self.export = gr.Button("Export", scale=0, elem_id="label-export")

    def _wire(self, demo: Any) -> None:
        listing = [self.tab, self.rows, self.where]
        record_parts = [self.current, *self.boxes]
        opening = [*listing, self.opened, self.files, *record_parts]
        self.open_button.click(self.open, [self.tab, self.files, self.format], opening).then(
            None, self.files, None, js=REMEMBER
        )
        demo.load(self.reopen, [self.tab, self.files], opening, js=RECALL)
        filters = [self.tab, self.query, self.status]
        self.previous.click(lambda t, q, s: self.page.table(self.page.move(t, -1), q, s), filters, listing)
        self.following.click(lambda t, q, s: self.page.table(self.page.move(t, 1), q, s), filters, listing)
        self.query.submit(self.search, filters, listing)
        self.status.change(self.search, filters, listing)
        self.rows.select(self.select, [self.tab], [self.tab, *record_parts, self.message, self.conflict_row])
        self.changes = [*listing, *record_parts, self.message, self.conflict_row]
        self.save.click(self.save_form, [*filters, *self.boxes], self.changes)
        self.keep_mine.click(self.save_over, [*filters, *self.boxes], self.changes)
        self.add.click(self.add_record, filters, self.changes)
        for button, action in self.actions.items():
            button.click(partial(self.act, action=action), filters, self.changes)
        exporting = [self.tab, self.export_path, self.export_as, self.with_rejected]
        self.export.click(self.export_file, exporting, self.message)

    # ---- handlers
    def open(self, tab: Tab, path: str | None, fmt: str) -> list[Any]:
        try:
            tab, note = self.page.open(tab, path or "", fmt)
        except TunellmError as error:
            return [tab, gr.skip(), gr.skip(), f"**Error:** {error}", gr.skip(), *shown_record(tab, None)]
        tab, table_rows, place = self.page.table(tab, "", "all")
        return [tab, table_rows, place, note, path, *shown_record(tab, None)]

    def reopen(self, tab: Tab, remembered: str | None) -> list[Any]:
        if not remembered:
            return [tab, gr.skip(), gr.skip(), "", gr.skip(), *shown_record(tab, None)]
        return self.open(tab, remembered, "auto")

    def search(self, tab: Tab, text: str, status: str) -> Any:
        tab.pages = [-1]
        return self.page.table(tab, text, status)

    def select(self, tab: Tab, event: gr.SelectData) -> list[Any]:
        row = event.index[0] if isinstance(event.index, list | tuple) else event.index
        if tab.dataset is None or row >= len(tab.ids):
            return [tab, *shown_record(tab, None), "", gr.update(visible=False)]
        tab, record = self.page.load(tab, tab.ids[row])
        return [tab, *shown_record(tab, record), "", gr.update(visible=False)]

    def _changed(self, tab: Tab, record: Record | None, note: str, text: str, status: str) -> list[Any]:
        tab, table_rows, place = self.page.table(tab, text, status)
        return [tab, table_rows, place, *shown_record(tab, record), note, gr.update(visible=False)]

    def _unchanged(self, tab: Tab, note: str, conflict: Any = None) -> list[Any]:
        rest = [gr.skip()] * (len(self.changes) - 3)  # all but the tab, the message and the conflict row
        return [tab, *rest, note, gr.skip() if conflict is None else gr.update(visible=conflict)]

    def save_form(self, tab: Tab, text: str, status: str, *values: Any, overwrite: bool = False) -> list[Any]:
        try:
            tab, record, note = self.page.save(tab, Form(*values), overwrite)
        except Conflict as error:
            data = error.current.data
            detail = "; ".join(f"{key}: {data.get(key)!r}" for key in error.fields or list(data))
            tab.version = error.current.version  # "keep mine" saves over the version just shown
            note = f"**Conflict:** {error}. Theirs: {detail[:600]}. Your text is still in the form."
            return self._unchanged(tab, note, conflict=True)
        except TunellmError as error:
            return self._unchanged(tab, f"**Error:** {error}")
        return self._changed(tab, record, note, text, status)

    def save_over(self, tab: Tab, text: str, status: str, *values: Any) -> list[Any]:
        return self.save_form(tab, text, status, *values, overwrite=True)

    def add_record(self, tab: Tab, text: str, status: str) -> list[Any]:
        try:
            tab, record = self.page.add(tab)
        except TunellmError as error:
            return self._unchanged(tab, f"**Error:** {error}")
        return self._changed(tab, record, "added a record at the end", text, status)

    def act(self, tab: Tab, text: str, status: str, *, action: str) -> list[Any]:
        try:
            tab, record, note = self.page.act(tab, action)
        except Conflict as error:
            tab, record = self.page.load(tab, error.current.id)
            note = f"**Conflict:** {error}; showing the latest version"
        except TunellmError as error:
            return self._unchanged(tab, f"**Error:** {error}")
        if record is None:
            return self._unchanged(tab, note)
        return self._changed(tab, record, note, text, status)

    def export_file(self, tab: Tab, path: str, export_as: str, include_rejected: bool) -> str:
        try:
            return self.page.export(tab, path, export_as, include_rejected)
        except TunellmError as error:
            return f"**Error:** {error}"
