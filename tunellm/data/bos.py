"""BOS where the model expects it: a sample starts with the BOS id when its tokenizer would put one there.

Segments are encoded with `add_special_tokens=False` (so a prompt encodes alike before a reply and at the end
of a generation prompt), which also drops the BOS that SentencePiece bases (Llama-2, Chinese-LLaMA, Baichuan-7B,
...) were pretrained with. Whether the model wants one is asked of the tokenizer itself: its own encoding of a
probe text starts with `bos_token_id` (`add_bos_token` and its post-processor decide that). The id is then put
in front of each sample, as a prompt token, unless the template already wrote it (llama2, chat templates with
`{{ bos_token }}`). Inserted as an id rather than text, so the text after it encodes as the tokenizer's own call
would encode it (a SentencePiece tokenizer reads "<s>Hello" and "Hello" differently).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bos_to_add(tokenizer: Any) -> int | None:
    """The BOS id the tokenizer puts in front of a text by itself, or None (GPT-2 style, ChatGLM, Qwen...)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if not isinstance(bos, int):
        return None
    try:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    except Exception:  # a remote-code tokenizer that cannot encode a probe: leave the samples as they are
        return None
    return bos if len(ids) > 0 and ids[0] == bos else None


def prepend_bos(
    ids: np.ndarray, lengths: np.ndarray, sample: np.ndarray, trainable: np.ndarray, bos: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat segments (ids, length, owning sample, trainable) with a one-token BOS segment before each sample's
    first segment, where that segment does not already start with `bos`."""
    if not len(lengths):
        return ids, lengths, sample, trainable
    first = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]])  # each sample's first segment
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    nonempty = lengths[first] > 0
    has = np.zeros(len(first), bool)
    has[nonempty] = ids[starts[first][nonempty]] == bos
    need = first[~has]
    return (
        np.insert(ids, starts[need], bos).astype(ids.dtype),
        np.insert(lengths, need, 1),
        np.insert(sample, need, sample[need]),
        np.insert(trainable, need, False),
    )
