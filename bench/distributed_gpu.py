"""Throughput and peak memory of the distributed strategies on one device, at the 7B-shape LoRA case: the plain
one-process run, DeepSpeed ZeRO-2 and ZeRO-3, and FSDP2, each row in its own process so that peaks do not mix.

Model: a LlamaConfig with Llama-2-7B's shape (hidden 4096, MLP 11008, 32 layers, 32 heads, vocab 32000), random
(seed 0), bf16, LoRA r=8 on q/k/v/o, activation checkpointing, batch `--batch` x `--seq-len` random tokens, all
trained. Each row goes through tunellm's own strategy (`make_strategy`) and the loop's `_optimizer_step`, as
`tunellm train` with `train.distributed=...` does. Per step: wall time (CUDA synchronised) after `--warmup` steps;
memory: `torch.cuda.max_memory_allocated` on a GPU, the process's peak RSS on the CPU.

    python bench/distributed_gpu.py                  # on a GPU: the 7B shape
    python bench/distributed_gpu.py --shape tiny     # anywhere: hidden 64, 2 layers, to check the script end to end

Rows whose engine is not installed (DeepSpeed) print their skip reason.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROWS = {
    "plain": {"distributed": "none"},
    "zero2": {"distributed": "deepspeed", "zero_stage": 2},
    "zero3": {"distributed": "deepspeed", "zero_stage": 3},
    "fsdp2": {"distributed": "fsdp"},
}
SHAPES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
}


def run_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    from tunellm.config.schema import RunConfig, TrainConfig
    from tunellm.methods import METHODS, enable_activation_checkpointing
    from tunellm.methods.lora import LoraMethod
    from tunellm.models.families import family_for
    from tunellm.train.loop import _optimizer_step
    from tunellm.train.optim import build_scheduler, method_optimizer
    from tunellm.train.strategy import make_strategy

    cuda = torch.cuda.is_available()
    train = TrainConfig(
        output_dir="/tmp/tunellm-bench-distributed", bf16=cuda, gradient_checkpointing=True, report_to=[],
        per_device_train_batch_size=args.batch, max_steps=args.steps, **ROWS[name],
    )  # fmt: skip
    try:
        strategy = make_strategy(train)
    except Exception as error:  # DeepSpeed missing
        return {"row": name, "skipped": str(error).splitlines()[0]}
    set_seed(0)
    config = LlamaConfig(vocab_size=32000 if args.shape == "7b" else 1024, **SHAPES[args.shape])
    model = LlamaForCausalLM(config).to(torch.bfloat16 if cuda else torch.float32)
    method = LoraMethod(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = METHODS.get("lora").apply(model, method, family_for("llama"))
    enable_activation_checkpointing(model)
    run = RunConfig(method=method, train=train)
    model, optimizer = strategy.prepare(model, lambda bare: method_optimizer(bare, run, METHODS.get("lora")))
    scheduler = build_scheduler(optimizer, train, args.steps)
    model.train()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        _optimizer_step(strategy, model, optimizer, scheduler, [batch], train)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    step = statistics.median(times[args.warmup :] or times)
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    strategy.close()
    return {
        "row": name, "device": torch.cuda.get_device_name() if cuda else "cpu", "step_s": round(step, 4),
        "tokens_per_s": round(args.batch * args.seq_len / step, 1), "peak_gib": round(peak, 2),
        "peak_kind": "cuda max_memory_allocated" if cuda else "process peak RSS",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--shape", choices=list(SHAPES), default="7b")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--row", help=argparse.SUPPRESS)  # one row, in this process
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, args)), flush=True)
        return
    results = []
    for name in args.rows.split(","):
        command = [sys.executable, __file__, *sys.argv[1:], "--row", name]
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=Path(__file__).parents[1])
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        results.append(json.loads(lines[-1]) if lines else {"row": name, "failed": done.stderr[-600:]})
        print(json.dumps(results[-1]), flush=True)
    print("\n| row | step (s) | tokens/s | peak GiB |\n|---|---|---|---|")
    for r in results:
        if "step_s" in r:
            print(f"| {r['row']} | {r['step_s']} | {r['tokens_per_s']} | {r['peak_gib']} ({r['peak_kind']}) |")
        else:
            print(f"| {r['row']} | {r.get('skipped') or 'failed'} | | |")


if __name__ == "__main__":
    main()
