"""Freed activation memory goes back to the OS on the CPU once activation checkpointing is on."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tunellm import host_memory

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mmap threshold"
)

# 200 freed 2 MiB blocks with live 64 KiB tensors between them, as a layer's activations among kept checkpoints
RETAINED_MIB = """
import sys, torch
from tunellm.host_memory import return_large_blocks_to_os
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "fixed":
    assert return_large_blocks_to_os()
warm = torch.empty(2**19); del warm  # glibc raises its threshold to the size of a freed mapped block
base = rss_mib()
blocks, kept = [], []
for _ in range(200):
    blocks.append(torch.ones(2**19))
    kept.append(torch.ones(2**14))
del blocks
print(round(rss_mib() - base))
"""


def retained_mib(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", RETAINED_MIB, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_a_fixed_mmap_threshold_returns_freed_blocks_that_glibc_would_keep():
    assert retained_mib("default") > 300  # 400 MiB freed, kept by the process: why this module exists
    assert retained_mib("fixed") < 60


def test_the_users_own_malloc_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert host_memory.return_large_blocks_to_os() is False


def test_checkpointing_on_the_cpu_fixes_the_threshold(monkeypatch, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tunellm.methods.base import enable_activation_checkpointing

    calls = []
    monkeypatch.setattr(host_memory, "return_large_blocks_to_os", lambda: calls.append(1) or True)
    enable_activation_checkpointing(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    assert calls == [1]
