"""The tokenization cache: content-keyed hits and misses, atomic writes, corrupt files rebuilt."""

import json
import os

import numpy as np
import pytest

from tunellm import atomic
from tunellm.data import cache
from tunellm.data.cache import cache_key, default_cache_dir, load_or_tokenize
from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import get_template
from tunellm.data.tokenize import TokenizeOptions
from tunellm.errors import DataError


class Reader:
    """Reads a JSONL file of {"q", "a"} rows into conversations, counting how often it is asked to."""

    def __init__(self, path):
        self.path = path
        self.calls = 0

    def __call__(self):
        self.calls += 1
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [
            Conversation([Turn("user", r["q"]), Turn("assistant", r["a"])], Source(str(self.path), line=n))
            for n, r in enumerate(map(json.loads, lines), start=1)
        ]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"q": f"Question {i}?", "a": f"Answer {i}."}) + "\n" for i in range(40)))
    return path


@pytest.fixture
def run(default_tokenizer, tmp_path):
    folder = tmp_path / "cache"

    def run(reader, template="chatml", options=None, read_options=None):
        return load_or_tokenize(
            reader,
            [reader.path],
            default_tokenizer,
            get_template(template, default_tokenizer),
            options or TokenizeOptions(),
            read_options=read_options,
            cache_dir=folder,
        )

    run.folder = folder
    return run


def cache_files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_miss_then_hit_without_reading(data, run):
    reader = Reader(data)
    cold = run(reader)
    warm = run(reader)
    assert reader.calls == 1
    assert not cold.report.from_cache and warm.report.from_cache
    assert np.array_equal(cold.input_ids, warm.input_ids) and np.array_equal(cold.labels, warm.labels)
    assert np.array_equal(cold.offsets, warm.offsets) and warm.report.rows == 40
    assert [p.endswith(".npz") for p in cache_files(run.folder)] == [True]
    for field in ("records", "file_ids", "lines", "indices"):  # which record each sample came from, kept too
        assert np.array_equal(getattr(cold.sources, field), getattr(warm.sources, field))
    assert warm.sources.source(3) == cold.sources.source(3) and warm.sources.source(3).file == str(data)
    assert cold.key and warm.key == cold.key  # the training state records it: resume checks the data


def test_one_changed_byte_is_a_miss(data, run):
    reader = Reader(data)
    run(reader)
    data.write_bytes(data.read_bytes().replace(b"Answer 7.", b"Answer 8."))
    assert not run(reader).report.from_cache and reader.calls == 2


@pytest.mark.parametrize(
    "change",
    [
        {"options": TokenizeOptions(cutoff_len=512)},
        {"options": TokenizeOptions(train_on_prompt=True)},
        {"template": "alpaca"},
        {"read_options": {"format": "alpaca"}},
    ],
)
def test_changed_setting_is_a_miss(data, run, change):
    reader = Reader(data)
    run(reader)
    assert not run(reader, **change).report.from_cache and reader.calls == 2


def test_thread_count_is_not_part_of_the_key(data, run):
    reader = Reader(data)
    run(reader, options=TokenizeOptions(num_workers=2))
    assert run(reader, options=TokenizeOptions(num_workers=1)).report.from_cache


def test_key_depends_on_the_tokenizer(data, default_tokenizer):
    import copy

    template = get_template("chatml", default_tokenizer)
    other = copy.copy(default_tokenizer)
    other.chat_template = "{{ messages }}"
    keys = {cache_key([data], t, template, TokenizeOptions()) for t in (default_tokenizer, other)}
    assert len(keys) == 2


def test_crash_before_rename_leaves_nothing_reusable(data, run, monkeypatch):
    reader = Reader(data)

    def crash(*args):
        raise KeyboardInterrupt  # killed between writing the temporary file and renaming it

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        run(reader)
    assert cache_files(run.folder) == []
    monkeypatch.undo()
    assert not run(reader).report.from_cache and reader.calls == 2


def test_crash_mid_write_leaves_nothing_reusable(data, run, monkeypatch):
    reader = Reader(data)

    def half_written(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.np, "savez", half_written)
    assert not run(reader).report.from_cache  # a failed write costs speed, not the run
    assert cache_files(run.folder) == []
    monkeypatch.undo()
    run.folder.joinpath(".leftover-of-a-killed-writer.tmp").write_bytes(b"PK\x03\x04 partial")
    assert not run(reader).report.from_cache and reader.calls == 2
    assert run(reader).report.from_cache and reader.calls == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_cache_is_rebuilt(data, run, damage):
    reader = Reader(data)
    good = run(reader)
    path = run.folder / next(p for p in cache_files(run.folder) if p.endswith(".npz"))
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":  # inside the input_ids array: the zip still opens, the checksum does not match
        at = raw.index(good.input_ids[:8].tobytes()) + 2
        path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
    elif damage == "garbage":
        path.write_bytes(b"not a cache file")
    else:
        path.write_bytes(b"")
    rebuilt = run(reader)
    assert not rebuilt.report.from_cache and reader.calls == 2
    assert np.array_equal(rebuilt.input_ids, good.input_ids)
    assert run(reader).report.from_cache and reader.calls == 2


def test_default_folder_follows_tunellm_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELLM_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tokenized"


def test_missing_file_names_it(tmp_path, default_tokenizer):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="nope.jsonl"):
        load_or_tokenize(
            list, [missing], default_tokenizer, get_template("chatml", default_tokenizer), cache_dir=tmp_path
        )


def test_without_files_nothing_is_cached(tmp_path, default_tokenizer):
    rows = [Conversation([Turn("user", "Hi"), Turn("assistant", "Yo")], Source("<memory>"))]
    dataset = load_or_tokenize(
        rows, [], default_tokenizer, get_template("chatml", default_tokenizer), cache_dir=tmp_path
    )
    assert len(dataset) == 1 and not os.listdir(tmp_path)


def test_key_ignores_the_tokenizers_call_time_padding_state(data, default_tokenizer):
    template = get_template("chatml", default_tokenizer)
    before = cache_key([data], default_tokenizer, template, TokenizeOptions())
    backend = default_tokenizer.backend_tokenizer
    backend.enable_padding(length=16)
    try:
        assert cache_key([data], default_tokenizer, template, TokenizeOptions()) == before
    finally:
        backend.no_padding()
