"""Where each tokenized sample came from: its record's number in the read order and its Source, as flat arrays.

A tokenized set excludes records left with no trained token, so sample i is not record i. `SampleSources`
keeps, per kept sample, the record number (the dev split draws records by it, so the dev loss and the dev
scorer see the same records) and the file and line or index (the NaN guard names the rows of a bad batch).
Flat arrays and a list of file names, so the tokenization cache stores them without pickling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunellm.data.record import Source

NONE = -1  # no line, or no index


@dataclass
class SampleSources:
    records: np.ndarray  # int64, per sample: the record's position among all records read
    file_ids: np.ndarray  # int32, per sample: index into `files`
    lines: np.ndarray  # int64, NONE when the source has no line
    indices: np.ndarray  # int64, NONE when the source has no array index
    files: list[str]

    @classmethod
    def build(cls, sources: Sequence[Source], kept: np.ndarray) -> SampleSources:
        """Arrays for the samples of `sources` (one per record read) at positions `kept`."""
        files: dict[str, int] = {}
        chosen = [sources[i] for i in kept.tolist()]
        return cls(
            records=np.asarray(kept, np.int64),
            file_ids=np.fromiter((files.setdefault(s.file, len(files)) for s in chosen), np.int32, len(chosen)),
            lines=np.fromiter((NONE if s.line is None else s.line for s in chosen), np.int64, len(chosen)),
            indices=np.fromiter((NONE if s.index is None else s.index for s in chosen), np.int64, len(chosen)),
            files=list(files),
        )

    @classmethod
    def unknown(cls, samples: int) -> SampleSources:
        """For samples made without records (tests, callers building arrays by hand): numbered in order."""
        none = np.full(samples, NONE, np.int64)
        return cls(np.arange(samples, dtype=np.int64), np.zeros(samples, np.int32), none, none.copy(), ["<unknown>"])

    def __len__(self) -> int:
        return len(self.records)

    def source(self, sample: int) -> Source:
        line, index = int(self.lines[sample]), int(self.indices[sample])
        return Source(
            self.files[int(self.file_ids[sample])], None if line == NONE else line, None if index == NONE else index
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """For the cache file: name -> array (the file names go in its JSON meta)."""
        return {
            "src_records": self.records,
            "src_file_ids": self.file_ids,
            "src_lines": self.lines,
            "src_indices": self.indices,
        }

    @classmethod
    def from_arrays(cls, data: Any, files: list[str]) -> SampleSources:
        return cls(data["src_records"], data["src_file_ids"], data["src_lines"], data["src_indices"], files)


def held_out_records(records: int, fraction: float, seed: int) -> np.ndarray:
    """The record numbers `data.dev_split` holds out of `records` read: a seeded draw of `fraction` (at least one),
    sorted. Drawn over records, not tokenized samples, so training (dev loss) and the dev scorer agree."""
    held = min(max(1, round(records * fraction)), records)
    return np.sort(np.random.default_rng(seed).permutation(records)[:held])
