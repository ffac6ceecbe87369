"""The machine a run targets: the detected one, or a GPU named with `--gpu` from a small table.

GPU peaks are dense bf16 tensor-core FLOP/s from the vendors' data sheets (fp16 for cards without bf16).
`GPU_EFFICIENCY` turns a peak into a training rate: a plain LoRA loop on an H100 reached 6,246 tokens/s on the
Llama-2-7B shape with checkpointing (../shared/FACTS.md), 25% of the peak by `estimate.step_flops`' count.
The CPU rate is calibrated the same way from FACTS' 2-core step times of the default model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunellm.errors import ConfigError
from tunellm.registry import did_you_mean

GIB = 2**30
GPU_EFFICIENCY = 0.25
# LoRA r8 on the default model, 4 x 256 tokens, fp32: about 5.2 s per step on 2 cores, which is 588 GFLOP
CPU_FLOPS_PER_CORE = 56e9
CPU_BF16_SPEEDUP = 1.5  # autocast bf16 on a CPU with AVX-512 bf16: 3.1-3.9 s against 5.2 s


@dataclass(frozen=True)
class Hardware:
    name: str
    kind: str  # cpu or cuda
    memory: float  # bytes one process may use: GPU memory, or the host's available memory
    peak_flops: float  # dense bf16 (GPU) or fp32 (CPU) FLOP/s
    bf16: bool = True
    count: int = 1  # GPUs on the machine

    def rate(self, half_precision: bool) -> float:
        """FLOP/s a training step reaches."""
        if self.kind == "cuda":
            return self.peak_flops * GPU_EFFICIENCY
        return self.peak_flops * (CPU_BF16_SPEEDUP if half_precision else 1.0)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "memory_gib": round(self.memory / GIB, 1), "count": self.count}


GPUS = {  # name -> (memory GiB, dense bf16 TFLOP/s, has bf16)
    "H200-141GB": (141, 989, True),
    "H100-80GB": (80, 989, True),
    "H100-PCIe-80GB": (80, 756, True),
    "A100-80GB": (80, 312, True),
    "A100-40GB": (40, 312, True),
    "L40S-48GB": (48, 362, True),
    "A6000-48GB": (48, 155, True),
    "A10G-24GB": (24, 125, True),
    "L4-24GB": (24, 121, True),
    "RTX4090-24GB": (24, 165, True),
    "RTX3090-24GB": (24, 71, True),
    "V100-32GB": (32, 125, False),
    "T4-16GB": (16, 65, False),
}


def named_gpu(name: str, count: int = 1) -> Hardware:
    key = {k.lower(): k for k in GPUS}.get(name.lower())
    if key is None:
        raise ConfigError(
            f"unknown GPU '{name}'",
            field="--gpu",
            expected="one of " + ", ".join(GPUS),
            hint=did_you_mean(name, list(GPUS)),
        )
    memory, tflops, bf16 = GPUS[key]
    return Hardware(key, "cuda", memory * GIB, tflops * 1e12, bf16, count)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_host_memory(cgroup: Path = Path("/sys/fs/cgroup"), meminfo: Path = Path("/proc/meminfo")) -> float:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping; else total physical memory), or
    less where a cgroup v2 memory limit (a container's) leaves less."""
    available = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    try:
        with open(meminfo, encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    available = float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        used = float((cgroup / "memory.current").read_text())
    except (OSError, ValueError):
        return available
    return available if limit == "max" else min(available, float(limit) - used)


def detect() -> Hardware:
    """The first CUDA GPU when there is one (matched to the table by name and memory), else this CPU."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found = match_gpu(props.name, props.total_memory)
        peak, bf16 = (found.peak_flops, found.bf16) if found else (312e12, torch.cuda.is_bf16_supported())
        return Hardware(props.name, "cuda", float(props.total_memory), peak, bf16, torch.cuda.device_count())
    cores = cpu_cores()
    return Hardware(f"CPU ({cores} cores)", "cpu", available_host_memory(), cores * CPU_FLOPS_PER_CORE)


def match_gpu(device_name: str, memory: int) -> Hardware | None:
    """The table entry whose model appears in the device name, the one nearest in memory."""
    compact = device_name.replace(" ", "").upper()
    hits = [name for name in GPUS if name.split("-")[0].upper() in compact]
    if not hits:
        return None
    best = min(hits, key=lambda name: abs(GPUS[name][0] * GIB - memory))
    return named_gpu(best)
