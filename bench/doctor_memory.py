"""Measured peak RSS of short `tunellm train` runs of the default model on the CPU, beside `tunellm doctor`'s
estimate for the same config: the check that the memory estimate is within 25% (issue 12).

Each config runs as its own `tunellm train` process (2 steps of 4 x 256-token rows, so that AdamW's state
exists during the second step's backward); its peak RSS is the child's own `ru_maxrss` from `os.wait4`.
The estimate is `tunellm.doctor.estimate` for the same config, fed the sequence length the data reaches.

    .venv/bin/python bench/doctor_memory.py [--configs lora,lora_ckpt,full] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS: dict[str, list[str]] = {  # name -> overrides on top of COMMON
    "lora": ["method=lora", "r=8"],
    "lora_ckpt": ["method=lora", "r=8", "gradient_checkpointing=true"],
    "full": ["method=full"],
    "full_ckpt": ["method=full", "gradient_checkpointing=true"],
    "freeze": ["method=freeze", "trainable_layers=2"],
    "lora_b1": ["method=lora", "r=8", "per_device_train_batch_size=1"],
}
COMMON = ["max_steps=2", "per_device_train_batch_size=4", "data.cutoff_len=256", "logging_steps=1",
          "save_steps=100", "report_to=none", "learning_rate=1e-5"]  # fmt: skip
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and", "a", "careful", "engineer")


def long_rows(path: Path, rows: int = 8) -> Path:
    """Rows whose reply alone passes 256 tokens, so that every batch is 4 x 256 after truncation."""
    records = []
    for i in range(rows):
        reply = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(400))
        records.append({"instruction": f"Write a long passage number {i}.", "input": "", "output": reply})
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def measure(name: str, data: Path, workdir: Path, command: list[str], env: dict[str, str]) -> float:
    """Peak RSS in bytes of one `tunellm train` child process."""
    out = workdir / name
    args = [*command, "train", "--data", str(data), "--output", str(out), *COMMON, *RUNS[name],
            f"data.cache_dir={workdir / 'cache'}"]  # fmt: skip
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output = child.stdout.read().decode() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise RuntimeError(f"{name} failed:\n{output[-3000:]}")
    return usage.ru_maxrss * 1024.0


def estimate(name: str, data: Path) -> float:
    from tunellm.config.load import load_config
    from tunellm.doctor.checks.memory import estimate_for_config

    config = load_config(None, [f"data.train={data}", *COMMON, *RUNS[name]])
    return estimate_for_config(config, seq_len=256).total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="lora,lora_ckpt,full")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("tunellm")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "tunellm"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = long_rows(work / "long.jsonl")
        for name in args.configs.split(","):
            measured = measure(name, data, work, command, env)
            estimated = estimate(name, data)
            error = estimated / measured - 1
            results.append({"config": name, "measured_gib": measured / 2**30, "estimated_gib": estimated / 2**30,
                            "error": error})  # fmt: skip
            print(f"{name:10s} measured {measured / 2**30:6.2f} GiB  estimated {estimated / 2**30:6.2f} GiB  "
                  f"({error:+.1%})", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
