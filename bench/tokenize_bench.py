"""Tokenize the 52,002-row Alpaca set with the default tokenizer and the alpaca template, three ways:

(a) tunellm, cold cache: read the .json.gz with tunellm's reader (format detection, field checks; the 28
    rows with an empty output are skipped and listed, as `--skip-bad` does), render, batch-encode, mask,
    write the cache: exactly what `tunellm train` does on a first run;
(b) tunellm, warm cache: hash the file, load the cache;
(c) the usual approach: `datasets.Dataset.from_list(rows).map(fn, batched=True, num_proc=2)` where `fn`
    formats the same prompt and response text, tokenizes both and masks the prompt.

The tokenizer is loaded once, before any timing; imports are not timed. (c) is checked to give the
same ids and labels as (a) on the first 200 rows (before the first skipped one).

    .venv/bin/python bench/tokenize_bench.py [--data PATH] [--repeat N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from datasets import Dataset, disable_progress_bars

from tunellm.config.schema import DataConfig, ModelConfig
from tunellm.data.prepare import tokenized_training_set
from tunellm.data.templates import Template, get_template
from tunellm.data.tokenize import IGNORE_INDEX, TokenizedDataset
from tunellm.models.tokenizer import load_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_data.json.gz"
CUTOFF = 1024


def ours(path: Path, tokenizer: Any, template: Template, cache_dir: str) -> tuple[float, TokenizedDataset]:
    data = DataConfig(train=[str(path)], template=template.name, cutoff_len=CUTOFF, skip_bad=True, cache_dir=cache_dir)
    start = time.perf_counter()
    dataset = tokenized_training_set(data.train, data, tokenizer, template)
    return time.perf_counter() - start, dataset


def usual(path: Path, tokenizer: Any, system: str, num_proc: int) -> tuple[float, Any]:
    """What a typical fine-tuning script does with `datasets`."""
    eos = tokenizer.eos_token

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        questions = [q + ("\n" + i if i else "") for q, i in zip(batch["instruction"], batch["input"], strict=True)]
        prompts = [f"{system}\n\n### Instruction:\n{q}\n\n### Response:\n" for q in questions]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer([output + eos for output in batch["output"]], add_special_tokens=False)["input_ids"]
        return {
            "input_ids": [(p + r)[:CUTOFF] for p, r in zip(prompt_ids, reply_ids, strict=True)],
            "labels": [([IGNORE_INDEX] * len(p) + r)[:CUTOFF] for p, r in zip(prompt_ids, reply_ids, strict=True)],
        }

    start = time.perf_counter()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = json.load(handle)
    dataset = Dataset.from_list(rows)
    dataset = dataset.map(encode, batched=True, num_proc=num_proc, remove_columns=dataset.column_names)
    return time.perf_counter() - start, dataset


def check_same(ours_set: TokenizedDataset, usual_set: Any, rows: int = 200) -> None:
    for i in range(rows):
        mine, theirs = ours_set[i], usual_set[i]
        if mine["input_ids"].tolist() != theirs["input_ids"] or mine["labels"].tolist() != theirs["labels"]:
            raise SystemExit(f"row {i}: the two approaches disagree")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each approach; the table shows the median")
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()

    disable_progress_bars()
    tokenizer = load_tokenizer(ModelConfig())
    template = get_template("alpaca", tokenizer)
    names = ["(a) tunellm, cold cache", "(b) tunellm, warm cache", "(c) datasets.map"]
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache_dir:
            cold, dataset = ours(args.data, tokenizer, template, cache_dir)
            warm, cached = ours(args.data, tokenizer, template, cache_dir)
            assert not dataset.report.from_cache and cached.report.from_cache
        times["(a) tunellm, cold cache"].append(cold)
        times["(b) tunellm, warm cache"].append(warm)
    # datasets.map(num_proc>1) sets TOKENIZERS_PARALLELISM=false and restores os.environ by replacing the
    # object, so the C-level variable stays "false": every later batch encode in this process runs on one
    # thread. (c) therefore runs after all of (a) and (b).
    for _ in range(args.repeat):
        seconds, mapped = usual(args.data, tokenizer, template.default_system or "", args.num_proc)
        times["(c) datasets.map"].append(seconds)
    check_same(dataset, mapped)
    rows = dataset.report.rows
    print(cached.report.read_summary)
    print(dataset.report.summary())
    print(f"\n| approach | seconds (median of {args.repeat}) | all runs | rows/s |\n|---|---:|---|---:|")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"| {name} | {median:.2f} | {', '.join(f'{t:.2f}' for t in runs)} | {rows / median:,.0f} |")


if __name__ == "__main__":
    main()
