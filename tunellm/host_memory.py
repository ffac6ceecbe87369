"""Give freed activation memory back to the OS on the CPU.

glibc serves an allocation above its mmap threshold with its own mapping, returned to the OS on free, but it raises
that threshold (up to 32 MiB) to the size of each such block freed, so after the first step a layer's activations
come from the heap, whose freed holes between live tensors are kept by the process. With activation checkpointing
those holes are most of the peak RSS (measured: one 8,192-token LoRA step of the default model, 8.6 GiB without and
2.2 GiB with a fixed threshold). Fixing the threshold costs a page fault per fresh page of each large tensor, so it is
set only where memory was asked for: activation checkpointing on the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 256 * 1024


def return_large_blocks_to_os(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; False where that is not glibc, or the user set
    MALLOC_MMAP_THRESHOLD_ (their setting wins)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
