"""Wall time of everyday commands, each in a fresh process: what a user waits for at the prompt.

Commands timed (median of --repeat runs, in this order):
- help: `tunellm --help`;
- config-error: `tunellm config show max_steps=x` (a config error, exit 2);
- data-startup: `tunellm data stats` on a 2-row file (imports and tokenizer loading, next to no work);
- data-stats: `tunellm data stats --json` on the 52,002-row Alpaca .json.gz (`--skip-bad`: 28 rows have no output);
- peer-map: the usual script in a fresh process: import datasets and transformers, load the same tokenizer, read
  the same file, `Dataset.from_list(rows).map(fn, batched=True, num_proc=2)` with `fn` tokenizing prompt and reply
  (bench/tokenize_bench.py's (c));
- chat-key-error: `tunellm chat --prompt hi max_stepz=1` (a mistyped key, exit 2);
- chat: `tunellm chat --adapter RUN --prompt "Who are you?" --max-new-tokens 16` with the default model;
- chat-startup: the same with `--max-new-tokens 1`: loading, next to no generation.

`--tree DIR` times the tunellm source tree DIR (put first on PYTHONPATH), e.g. an export of an older commit to
measure "before". Runs at the caller's priority: measure at normal priority on a quiet machine. Wall time is
what the user waits for; CPU time (user + system, the process and its children) is printed beside it, as it
moves far less when other work shares the cores.

    .venv/bin/python bench/cli_latency.py --run RUN_FOLDER [--tree DIR] [--repeat 3] [--only help,chat]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALPACA = next(
    (p / "shared/data/alpaca/alpaca_data.json.gz" for p in ROOT.parents if (p / "shared/data/alpaca").is_dir()),
    ROOT.parent / "shared/data/alpaca/alpaca_data.json.gz",
)
PEER = r"""
import gzip, json, sys
from datasets import Dataset, disable_progress_bars
from transformers import AutoTokenizer
disable_progress_bars()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
rows = json.loads(gzip.open(sys.argv[1], "rt", encoding="utf-8").read())
def encode(batch):
    prompts = [q + ("\n" + i if i else "") for q, i in zip(batch["instruction"], batch["input"])]
    p = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r = tokenizer([o + tokenizer.eos_token for o in batch["output"]], add_special_tokens=False)["input_ids"]
    return {"input_ids": [a + b for a, b in zip(p, r)], "labels": [[-100] * len(a) + b for a, b in zip(p, r)]}
Dataset.from_list(rows).map(encode, batched=True, num_proc=2, remove_columns=["instruction", "input", "output"])
"""


def tunellm(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunellm", *args]


def commands(run: str | None, work: Path) -> dict[str, tuple[list[str], tuple[int, ...]]]:
    """name: (argv, accepted exit codes)."""
    tiny = work / "two.jsonl"
    tiny.write_text('{"instruction": "hi", "output": "hello"}\n{"instruction": "2+2?", "output": "4"}\n')
    default_model = Path.home() / ".cache" / "tunellm" / "models" / "SmolLM2-135M-Instruct"
    found = {
        "help": (tunellm("--help"), (0,)),
        "config-error": (tunellm("config", "show", "max_steps=x"), (2,)),
        "data-startup": (tunellm("data", "stats", str(tiny), "--json"), (0,)),
        "data-stats": (tunellm("data", "stats", str(ALPACA), "--json", "--skip-bad"), (0,)),
        "peer-map": ([sys.executable, "-c", PEER, str(ALPACA), str(default_model)], (0,)),
    }
    found["chat-key-error"] = (tunellm("chat", "--prompt", "hi", "max_stepz=1"), (2,))
    if run:
        prompt = ("--prompt", "Who are you?", "--max-new-tokens", "16")
        found["chat"] = (tunellm("chat", "--adapter", run, *prompt), (0,))
        one = ("--prompt", "Who are you?", "--max-new-tokens", "1")
        found["chat-startup"] = (tunellm("chat", "--adapter", run, *one), (0,))
    return found


def time_once(argv: list[str], ok: tuple[int, ...], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children): CPU time moves far less than wall time when
    other work shares the cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a training run or checkpoint on the default model, for the chat timing")
    parser.add_argument("--tree", type=Path, default=ROOT, help="tunellm source tree to time (default: this one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="comma-separated names to time")
    options = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(options.tree.resolve()))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name, (argv, ok) in commands(options.run, work).items():
            if options.only and name not in options.only.split(","):
                continue
            runs = [time_once(argv, ok, env, work) for _ in range(options.repeat)]
            times, cpu = [wall for wall, _ in runs], [used for _, used in runs]
            results[name] = {
                "median_s": round(statistics.median(times), 2),
                "runs_s": [round(t, 2) for t in times],
                "median_cpu_s": round(statistics.median(cpu), 2),
                "load_average": round(os.getloadavg()[0], 2),
            }
            walls = ", ".join(f"{t:.2f}" for t in times)
            print(
                f"{name:<14} median {statistics.median(times):6.2f} s wall ({walls}), "
                f"{statistics.median(cpu):6.2f} s CPU; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    load = os.getloadavg()
    print(json.dumps({"tree": str(options.tree), "load_average": [round(x, 2) for x in load], "results": results}))


if __name__ == "__main__":
    main()
