"""The tokenization cache: tokenize once, reload in well under a second.

The key hashes everything the result depends on: the data files' bytes (streamed), the tokenizer
(its serialized tokenizer.json or vocabulary, special tokens, chat template), the template's
rendering of a probe conversation, the tokenization options, the caller's read options, the
package version and CACHE_VERSION (bump it whenever tokenize.py changes its output). A warm run
only hashes the files: the caller passes a callable that reads the conversations, called on a miss.

A cache file is an .npz of the flat arrays plus a `meta` JSON entry (key, checksum of the arrays,
report). It is written to a temporary file in the same folder, fsynced and renamed into place,
so a crash never leaves a partial file under the final name; a file that fails to load, or whose
key or checksum does not match, is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

import tunellm
from tunellm.atomic import atomic_open
from tunellm.data.record import Conversation
from tunellm.data.sources import SampleSources
from tunellm.data.templates.base import Template
from tunellm.data.tokenize import TokenizedDataset, TokenizeOptions, TokenizeReport, tokenize_conversations
from tunellm.errors import DataError
from tunellm.models.default import cache_root

CACHE_VERSION = 3
BUFFER = 1 << 20
STALE_SECONDS = 24 * 3600  # temporary files left by a killed writer are removed after a day

log = logging.getLogger(__name__)
Conversations = Iterable[Conversation] | Callable[[], Iterable[Conversation]]
PathLike = str | os.PathLike[str]


def default_cache_dir() -> Path:
    return cache_root() / "tokenized"


def load_or_tokenize(
    conversations: Conversations,
    files: Sequence[PathLike],
    tokenizer: Any,
    template: Template,
    options: TokenizeOptions | None = None,
    *,
    read_options: Mapping[str, Any] | None = None,
    cache_dir: PathLike | None = None,
    describe_read: Callable[[], str | None] | None = None,
) -> TokenizedDataset:
    """The tokenized training set of `files`, from the cache when the key matches.

    `conversations` is what the files read to (pass a callable so a warm cache never reads them);
    `read_options` is everything else that shaped those conversations (format, columns, system...).
    With no files there is nothing to key on, and the conversations are tokenized uncached.
    `describe_read`, called after reading, gives the read's summary (skipped records), which is cached too.
    """
    options = options or TokenizeOptions()
    if not files:
        return tokenize_conversations(materialize(conversations), tokenizer, template, options)
    key = cache_key(files, tokenizer, template, options, read_options)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.npz"
    cached = load_cached(path, key)
    if cached is not None:
        cached.key = key
        return cached
    dataset = tokenize_conversations(materialize(conversations), tokenizer, template, options)
    dataset.key = key
    if describe_read is not None:
        dataset.report.read_summary = describe_read()
    try:
        save_cached(dataset, path, key)
    except OSError as error:  # a read-only or full disk costs speed, not the run
        log.warning("could not write the tokenization cache %s: %s", path, error)
    return dataset


def materialize(conversations: Conversations) -> Iterable[Conversation]:
    return conversations() if callable(conversations) else conversations


def cache_key(
    files: Sequence[PathLike],
    tokenizer: Any,
    template: Template,
    options: TokenizeOptions,
    read_options: Mapping[str, Any] | None = None,
) -> str:
    digest = hashlib.blake2b(digest_size=20)
    settings = {
        "cache_version": CACHE_VERSION,
        "tunellm": tunellm.__version__,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": template.fingerprint(),
        "options": options.result_options(),
        "read": dict(read_options or {}),
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for file in files:
        hash_file(file, digest)
    return digest.hexdigest()


def hash_file(file: PathLike, digest: Any) -> None:
    """Add a file's name and bytes to `digest` (names too: sources in the report name the files)."""
    digest.update(os.fsencode(file) + b"\0")
    try:
        with open(file, "rb") as handle:
            while chunk := handle.read(BUFFER):
                digest.update(chunk)
    except OSError as error:
        raise DataError(f"cannot read the data file: {error.strerror}", file=os.fspath(file)) from None
    digest.update(b"\0")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides the ids: the tokenizer.json (or vocabulary) and the special tokens."""
    digest = hashlib.blake2b(digest_size=20)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        if backend.truncation is not None or backend.padding is not None:
            # call-time state that transformers sets and resets per call: hash the text without it
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())
            backend.no_truncation()
            backend.no_padding()
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {
        "class": type(tokenizer).__name__,
        "special": getattr(tokenizer, "special_tokens_map", {}),
        "added": {str(k): str(v) for k, v in getattr(tokenizer, "added_tokens_decoder", {}).items()},
        "split_special_tokens": getattr(tokenizer, "split_special_tokens", None),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def arrays_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=20)
    for array in arrays:
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def load_cached(path: Path, key: str) -> TokenizedDataset | None:
    """The dataset stored at `path`, or None when it is missing, unreadable or not this key's."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            if meta["cache_version"] != CACHE_VERSION or meta["key"] != key:
                raise ValueError("written for another key")
            ids, labels, offsets = data["input_ids"], data["labels"], data["offsets"]
            sources = SampleSources.from_arrays(data, meta["source_files"])
        if arrays_digest(ids, labels, offsets, *sources.arrays().values()) != meta["digest"]:
            raise ValueError("checksum mismatch")
        dataset = TokenizedDataset(ids, labels, offsets, TokenizeReport.from_dict(meta["report"]), sources)
    except Exception as error:  # whatever is wrong with a cache file, the answer is to rebuild it
        log.warning("tokenization cache %s is unusable (%s: %s); rebuilding it", path, type(error).__name__, error)
        return None
    dataset.report.from_cache = True
    dataset.report.cache_file = str(path)
    return dataset


def save_cached(dataset: TokenizedDataset, path: Path, key: str) -> None:
    """Write atomically: a temporary file in the same folder, fsynced, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent)
    sources = dataset.sources.arrays()
    meta = {
        "cache_version": CACHE_VERSION,
        "key": key,
        "digest": arrays_digest(dataset.input_ids, dataset.labels, dataset.offsets, *sources.values()),
        "report": dataset.report.to_dict(),
        "source_files": dataset.sources.files,
    }
    meta_bytes = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode(), dtype=np.uint8)
    arrays = {"input_ids": dataset.input_ids, "labels": dataset.labels, "offsets": dataset.offsets, **sources}
    with atomic_open(path, "wb") as file:
        np.savez(file, **arrays, meta=meta_bytes)
    dataset.report.cache_file = str(path)


def remove_stale(folder: Path) -> None:
    cutoff = time.time() - STALE_SECONDS
    for leftover in folder.glob(".*.tmp"):
        with suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
