"""The Label page's logic without a browser: open or start a file, page, save (merge or conflict), act, export."""

import json

import pytest

from tunellm.errors import ConfigError, TunellmError
from tunellm.ui.label import PAGE, LabelPage, Tab
from tunellm.ui.records import form_from_row
from tunellm.ui.store import Conflict, LabelStore


@pytest.fixture
def page(tmp_path):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(PAGE + 5)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    return LabelPage(LabelStore(tmp_path / ".tunellm" / "labels.sqlite"), tmp_path)


def opened(page, path="d.json", fmt="auto"):
    tab, note = page.open(Tab(), path, fmt)
    return page.table(tab, "", "all")[0], note


def test_open_page_forward_and_back(page):
    tab, note = opened(page)
    assert note.endswith(f"{PAGE + 5:,} records (alpaca)")
    tab, rows, where = page.table(tab, "", "all")
    assert rows[0] == [1, "new", "q0"] and len(rows) == PAGE and "25 match" in where
    tab, rows, _ = page.table(page.move(tab, 1), "", "all")
    assert [row[0] for row in rows] == [21, 22, 23, 24, 25]
    tab, rows, _ = page.table(page.move(tab, -1), "", "all")
    assert rows[0][0] == 1


def test_save_merge_conflict_and_overwrite_between_two_tabs(page):
    mine, _ = opened(page)
    theirs, _ = opened(page)
    mine, record = page.load(mine, mine.ids[0])
    theirs, _ = page.load(theirs, theirs.ids[0])
    form = form_from_row("alpaca", record.data)
    form.response = "mine"
    mine, saved, note = page.save(mine, form)
    assert (saved.data["output"], note) == ("mine", "saved")
    other = form_from_row("alpaca", record.data)
    other.query = "their input"
    theirs, merged, note = page.save(theirs, other)
    assert merged.data == {"instruction": "q0", "input": "their input", "output": "mine"} and "merged" in note
    mine.base, mine.version = merged.data, merged.version
    clash = form_from_row("alpaca", merged.data)
    clash.response = "theirs again"
    page.save(theirs, clash)
    again = form_from_row("alpaca", merged.data)
    again.response = "mine again"
    with pytest.raises(Conflict):
        page.save(mine, again)
    mine.version = page.store.get(mine.record).version  # what "keep mine" does after the conflict is shown
    assert page.save(mine, again, overwrite=True)[1].data["output"] == "mine again"


def test_actions_undo_and_export(page, tmp_path):
    tab, _ = opened(page)
    with pytest.raises(TunellmError, match="open a record first"):
        page.act(tab, "accepted")
    tab, _ = page.load(tab, tab.ids[0])
    tab, record, note = page.act(tab, "rejected")
    assert record.status == "rejected" and note == "marked rejected"
    tab, record, _ = page.act(tab, "delete")
    assert record.deleted
    tab, record, note = page.act(tab, "undo")
    assert not record.deleted and note == "undid your last change to record 1"
    tab, added = page.add(tab)
    assert added.position == PAGE + 5 and added.data == {"instruction": "", "input": "", "output": ""}
    with pytest.raises(TunellmError, match="record 25"):  # the blank new record is rejected by the reader
        page.export(tab, "out.jsonl", "same", False)
    page.act(tab, "undo")  # the add
    assert (
        page.export(tab, "out.jsonl", "openai", False) == f"wrote {PAGE + 4:,} records to out.jsonl"
    )  # all but the rejected one
    assert page.export(tab, "all.json", "same", True).startswith(f"wrote {PAGE + 5:,}")
    with pytest.raises(ConfigError, match="outside"):
        page.export(tab, "../out.jsonl", "same", False)


def test_a_new_file_needs_its_format(page):
    with pytest.raises(TunellmError, match="choose its format"):
        page.open(Tab(), "new.jsonl", "auto")
    tab, note = page.open(Tab(), "new.jsonl", "context_target")
    assert note.endswith("0 records (context_target)")
    tab, record = page.add(tab)
    assert record.data == {"context": "", "target": ""}
