"""The label store: import once, page, versioned edits, concurrency between tabs (threads and processes), undo."""

import json
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import pytest

from tunellm.errors import DataError
from tunellm.ui.store import Conflict, LabelStore

REPO = Path(__file__).resolve().parents[2]
ALPACA_52K = Path(os.environ.get("TUNELLM_SHARED_DATA", REPO.parent / "shared" / "data")) / "alpaca/alpaca_data.json.gz"


@pytest.fixture
def data_file(tmp_path):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def store(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    yield store
    store.close()


def test_a_file_is_imported_once_and_the_store_is_in_wal_mode(store, data_file):
    first = store.open_file(data_file)
    assert (first.format, store.count(first.id)) == ("alpaca", 5)
    assert store.open_file(data_file) == first  # no second import
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_paging_search_and_status_filter(store, data_file):
    dataset = store.open_file(data_file).id
    page = store.page(dataset, limit=2)
    assert [r.data["instruction"] for r in page] == ["q0", "q1"]
    after = store.page(dataset, after=page[-1].position, limit=2)
    assert [r.data["instruction"] for r in after] == ["q2", "q3"]
    assert [r.data["output"] for r in store.page(dataset, query="A3")] == ["a3"]
    store.set_status(page[0].id, "accepted", page[0].version, "tab")
    assert [r.position for r in store.page(dataset, status="accepted")] == [0]
    assert store.count(dataset, status="new") == 4


def test_an_edit_is_saved_at_once_and_bumps_the_version(store, data_file, tmp_path):
    dataset = store.open_file(data_file).id
    record = store.page(dataset, limit=1)[0]
    saved = store.update(record.id, record.data | {"output": "edited"}, record.version, "tab")
    assert saved.version == record.version + 1
    other = LabelStore(tmp_path / "labels.sqlite")  # another process's view: the change is committed
    assert other.get(record.id).data["output"] == "edited"


def test_two_tabs_editing_different_records_keep_both(store, data_file):
    dataset = store.open_file(data_file).id
    one, two = store.page(dataset, limit=2)
    store.update(one.id, one.data | {"output": "from A"}, one.version, "A")
    store.update(two.id, two.data | {"output": "from B"}, two.version, "B")
    assert [r.data["output"] for r in store.page(dataset, limit=2)] == ["from A", "from B"]


def test_same_record_same_field_is_a_conflict_and_nothing_is_overwritten(store, data_file):
    dataset = store.open_file(data_file).id
    record = store.page(dataset, limit=1)[0]
    store.update(record.id, record.data | {"output": "A's answer"}, record.version, "A", base=record.data)
    with pytest.raises(Conflict) as caught:
        store.update(record.id, record.data | {"output": "B's answer"}, record.version, "B", base=record.data)
    assert caught.value.fields == ["output"] and caught.value.current.data["output"] == "A's answer"
    assert store.get(record.id).data["output"] == "A's answer"
    # B decides to keep its own text: it saves again on the version it was shown
    resolved = store.update(record.id, record.data | {"output": "B's answer"}, caught.value.current.version, "B")
    assert resolved.data["output"] == "B's answer"


def test_same_record_different_fields_merge(store, data_file):
    dataset = store.open_file(data_file).id
    record = store.page(dataset, limit=1)[0]
    store.update(record.id, record.data | {"output": "new output"}, record.version, "A", base=record.data)
    merged = store.update(record.id, record.data | {"input": "new input"}, record.version, "B", base=record.data)
    assert merged.data == record.data | {"output": "new output", "input": "new input"}


def test_a_stale_edit_without_its_base_is_a_conflict(store, data_file):
    dataset = store.open_file(data_file).id
    record = store.page(dataset, limit=1)[0]
    store.update(record.id, record.data | {"output": "x"}, record.version, "A")
    with pytest.raises(Conflict):
        store.update(record.id, record.data | {"input": "y"}, record.version, "B")
    with pytest.raises(Conflict):
        store.delete(record.id, record.version, "B")
    with pytest.raises(Conflict):
        store.set_status(record.id, "rejected", record.version, "B")


def _edit_many(path, record_ids, tag):
    store = LabelStore(path)
    for record_id in record_ids:
        for _ in range(20):  # retry on conflict, as a person would after reloading
            current = store.get(record_id)
            try:
                data = current.data | {"output": current.data["output"] + f"+{tag}"}
                store.update(record_id, data, current.version, tag)
                break
            except Conflict:
                continue


def test_two_processes_editing_the_same_records_lose_no_change(store, data_file):
    dataset = store.open_file(data_file).id
    ids = [r.id for r in store.page(dataset)]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_edit_many, args=(store.path, ids, tag)) for tag in "AB"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    for record in store.page(dataset):
        assert sorted(record.data["output"].split("+")[1:]) == ["A", "B"], record.data


def test_add_delete_and_undo_per_session(store, data_file):
    dataset = store.open_file(data_file).id
    first = store.page(dataset, limit=1)[0]
    store.update(first.id, first.data | {"output": "mine"}, first.version, "A")
    added = store.add(dataset, {"instruction": "new", "input": "", "output": "n"}, "A")
    assert store.count(dataset) == 6 and added.position == 5
    store.update(first.id, store.get(first.id).data | {"input": "B's"}, store.get(first.id).version, "B")
    assert store.undo(dataset, "A").deleted  # A's last change: the add
    assert store.count(dataset) == 5
    with pytest.raises(Conflict):  # A's edit of the first record was built on by B: kept
        store.undo(dataset, "A")
    assert store.get(first.id).data == first.data | {"output": "mine", "input": "B's"}
    assert store.undo(dataset, "B").data == first.data | {"output": "mine"}
    victim = store.page(dataset, limit=1)[0]
    store.delete(victim.id, victim.version, "C")
    assert store.count(dataset) == 4
    assert not store.undo(dataset, "C").deleted and store.count(dataset) == 5
    assert store.undo(dataset, "C") is None


def test_rows_to_export_leave_out_rejected_and_deleted(store, data_file):
    dataset = store.open_file(data_file).id
    one, two, *_ = store.page(dataset)
    store.set_status(one.id, "rejected", one.version, "t")
    store.delete(two.id, two.version, "t")
    assert [row["instruction"] for row in store.rows(dataset)] == ["q2", "q3", "q4"]
    assert len(list(store.rows(dataset, include_rejected=True))) == 4


def test_bad_files_are_refused_with_their_location(store, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(DataError, match="bad.jsonl, line 2"):
        store.open_file(bad)


def test_a_new_dataset_starts_empty(store, tmp_path):
    dataset = store.new_dataset(tmp_path / "new.jsonl", "alpaca")
    assert store.count(dataset.id) == 0
    assert store.new_dataset(tmp_path / "new.jsonl", "alpaca") == dataset


@pytest.mark.skipif(
    not ALPACA_52K.is_file(), reason=f"shared data file {ALPACA_52K} is absent (set TUNELLM_SHARED_DATA)"
)
def test_the_52k_alpaca_file_imports_once_and_pages_fast(store):
    started = time.perf_counter()
    dataset = store.open_file(ALPACA_52K)
    imported = time.perf_counter() - started
    assert store.count(dataset.id) == 52_002
    started = time.perf_counter()
    assert store.open_file(ALPACA_52K) == dataset
    last = store.page(dataset.id, after=51_990, limit=20)
    searched = store.page(dataset.id, query="photosynthesis", limit=20)
    again = time.perf_counter() - started
    assert len(last) == 11 and searched
    assert imported < 30 and again < 1.0, (imported, again)
