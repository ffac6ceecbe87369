"""One LoRA step of the default model (SmolLM2-135M, fp32, LoRA r=8 on the family's 7 projections) at batch
4 x 256 tokens, two ways, each in its own process so that peak RSS is its own:

(a) tunellm: `load_model`, `lora.apply`, `fit`;
(b) the predecessor projects' stack: `AutoModelForCausalLM.from_pretrained` + `peft.get_peft_model` +
    `transformers.Trainer` (its defaults: fused AdamW, a shuffling DataLoader).

Data: the first 4 rows of `alpaca_en_demo.json` that reach 256 tokens, rendered with the default model's chat
template and truncated to 256 (prompt masked, response trained), so every batch is the same 4 x 256 real tokens.
Same seed (so the same LoRA init), lr 2e-4 cosine, clipping 1.0, no weight decay. Step time is the time between
the ends of consecutive optimizer steps (data, forward, backward, clip, optimizer, schedule, logging); the first
`--warmup` steps are left out. The CPU seconds of the process (all threads) per step are reported beside the wall
time: on a shared machine they move much less with the load. Imports and model loading are not timed. With
LoRA's B at zero the first step's loss does not depend on dropout, so both must log the same first loss: a check
that they do the same work.

    .venv/bin/python bench/train_step_bench.py [--steps 7] [--warmup 2] [--rounds 1] [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llama_factory" / "alpaca_en_demo.json"
SEED, ROWS, LENGTH, LR = 42, 4, 256, 2e-4


def prepare_rows(data_path: Path, out: Path) -> None:
    """The first ROWS samples of exactly LENGTH tokens after truncation, saved as an .npz."""
    from tunellm.config.schema import DataConfig, ModelConfig
    from tunellm.data.prepare import choose_template, tokenized_training_set
    from tunellm.models.load import load_tokenizer_and_template

    tokenizer, family_template = load_tokenizer_and_template(ModelConfig())
    with tempfile.TemporaryDirectory() as cache:
        data = DataConfig(train=[str(data_path)], cutoff_len=LENGTH, cache_dir=cache)
        template = choose_template(data.train, data, tokenizer, family_template)
        dataset = tokenized_training_set(data.train, data, tokenizer, template)
    full = [i for i in range(len(dataset)) if dataset.lengths[i] == LENGTH][:ROWS]
    np.savez(
        out,
        input_ids=np.stack([dataset[i]["input_ids"] for i in full]),
        labels=np.stack([dataset[i]["labels"] for i in full]),
    )


def load_rows(path: Path) -> list[dict[str, np.ndarray]]:
    arrays = np.load(path)
    return [
        {"input_ids": ids, "labels": labels} for ids, labels in zip(arrays["input_ids"], arrays["labels"], strict=True)
    ]


def run_ours(
    rows: list[dict[str, np.ndarray]], steps: int, output_dir: str
) -> tuple[list[tuple[float, float]], list[float]]:
    from transformers import set_seed

    from tunellm.config.schema import ModelConfig, RunConfig, TrainConfig
    from tunellm.methods import METHODS
    from tunellm.methods.lora import LoraMethod
    from tunellm.models.load import load_model
    from tunellm.train import fit, log

    set_seed(SEED)
    model, tokenizer, family = load_model(ModelConfig())
    model = METHODS.get("lora").apply(model, LoraMethod(r=8), family)
    ends: list[tuple[float, float]] = []
    advance = log.RunLog.advance

    def timed_advance(self: Any, step: int, epoch: float) -> None:
        ends.append((time.perf_counter(), time.process_time()))
        advance(self, step, epoch)

    log.RunLog.advance = timed_advance
    train = TrainConfig(
        output_dir=output_dir,
        per_device_train_batch_size=ROWS,
        max_steps=steps,
        learning_rate=LR,
        logging_steps=1,
        save_steps=10**6,
        report_to=[],
        seed=SEED,
    )
    result = fit(model, tokenizer, rows, None, RunConfig(train=train), show_progress=False)
    return ends, [entry["loss"] for entry in result.history if "loss" in entry]


def run_trainer(
    rows: list[dict[str, np.ndarray]], steps: int, output_dir: str
) -> tuple[list[tuple[float, float]], list[float]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.data.data_collator import default_data_collator

    from tunellm.models.default import default_model_dir
    from tunellm.models.families import family_for

    set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32)
    targets = list(family_for(model.config.model_type).lora_targets)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    ends: list[tuple[float, float]] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ends.append((time.perf_counter(), time.process_time()))

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    dataset = [
        {
            "input_ids": torch.as_tensor(row["input_ids"], dtype=torch.long),
            "labels": torch.as_tensor(row["labels"], dtype=torch.long),
            "attention_mask": torch.ones(len(row["input_ids"]), dtype=torch.long),
        }
        for row in rows
    ]
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=ROWS,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=default_data_collator, callbacks=[Timer()]
    )
    trainer.train()
    return ends, losses


def child(which: str, rows_file: Path, steps: int) -> None:
    """Run one stack and print its numbers as JSON."""
    import torch

    rows = load_rows(rows_file)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        ends, losses = (run_ours if which == "ours" else run_trainer)(rows, steps, output_dir)
    report = {
        "ends": ends,
        "losses": losses,
        "wall_s": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(report))


def measure(which: str, rows_file: Path, steps: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", which, "--rows", str(rows_file), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{which} failed:\n{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


NAMES = {"ours": "tunellm `fit`", "trainer": "transformers `Trainer` + peft"}


def step_times(ends: list[list[float]], warmup: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds of all threads) of each step after the warmup."""
    pairs = list(zip(ends[warmup - 1 : -1], ends[warmup:], strict=True))
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


def print_table(results: dict[str, list[dict[str, Any]]], warmup: int) -> None:
    """One row per stack and round, then per stack the medians over all its timed steps."""
    print("| stack | round | median s/step | min s/step | timed steps (s) | CPU s/step | peak RSS (MB) | first loss |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    pooled: dict[str, tuple[list[float], list[float]]] = {}
    for name, rounds in results.items():
        for number, result in enumerate(rounds, 1):
            wall, cpu = step_times(result["ends"], warmup)
            pooled.setdefault(name, ([], []))[0].extend(wall)
            pooled[name][1].extend(cpu)
            print(
                f"| {NAMES[name]} | {number} | {statistics.median(wall):.2f} | {min(wall):.2f} "
                f"| {', '.join(f'{t:.2f}' for t in wall)} | {statistics.median(cpu):.2f} "
                f"| {result['peak_rss_mb']:,.0f} | {result['losses'][0]:.4f} |"
            )
    for name, (wall, cpu) in pooled.items():
        print(
            f"{NAMES[name]}: {len(wall)} timed steps, median {statistics.median(wall):.2f} s (min {min(wall):.2f}), "
            f"median CPU {statistics.median(cpu):.2f} s per step"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=7, help="optimizer steps per stack, warmup included")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing (at least 1)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the stacks this many times (load drifts)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--child", choices=("ours", "trainer"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.steps)
        return
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "trainer": []}
    with tempfile.TemporaryDirectory() as folder:
        rows_file = Path(folder) / "rows.npz"
        prepare_rows(args.data, rows_file)
        for _ in range(args.rounds):
            for name, rounds in results.items():
                rounds.append(measure(name, rows_file, args.steps))
    print(f"LoRA r=8, SmolLM2-135M fp32, batch {ROWS} x {LENGTH} tokens, {args.steps - args.warmup} timed steps a run")
    print_table(results, args.warmup)
    print(f"torch threads: {results['ours'][0]['threads']}")


if __name__ == "__main__":
    main()
