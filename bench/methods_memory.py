"""Peak GPU memory and step time of every tuning method on a random-initialised Llama-2-7B shape, each method in
its own process so that peaks do not mix, plus one peer row: QLoRA done the usual way with plain transformers +
peft + bitsandbytes.

Rows (`--methods`, comma-separated; default: all but ptuning_v2_ckpt, in this order):
  lora        LoRA r=8, alpha 16, dropout 0.05 on all linear layers (the 7 projections; peft leaves lm_head out)
  dora        the same with use_dora
  qlora       the same on a 4-bit NF4 base with double quantization, bf16 compute, paged 8-bit AdamW (the defaults)
  ptuning_v2  a 128-position prefix (pre_seq_len 128, no prefix MLP), WITHOUT activation checkpointing: with it,
              transformers (5.23 checked) drops the prefix cache inside checkpointed layers ("Caching is
              incompatible with gradient checkpointing ... Setting `past_key_values=None`") while the attention
              mask still covers the prefix, and the forward fails (size 512 vs 640); tunellm's ptuning_v2 `check`
              therefore refuses train.gradient_checkpointing
  ptuning_v2_ckpt  the same with checkpointing (not in the default rows: its check refuses it and it prints the
              skip reason; run it after a transformers change to see whether the refusal can go)
  freeze      the last 2 decoder layers trained in full
  full_bf16   every weight, pure_bf16 (weights, gradients and AdamW state in bf16)
  full_fp32   every weight, fp32 master weights and fp32 AdamW state, bf16 autocast (expected OOM on an 80 GB GPU)
  peer_qlora  AutoModelForCausalLM.from_pretrained(quantization_config=the same NF4 config) +
              prepare_model_for_kbit_training (its default: reentrant checkpointing) + get_peft_model +
              bnb.optim.PagedAdamW8bit, a plain loop under torch.autocast(bf16) with the model's own loss

The rows themselves live in methods_memory_row.py, run as one process each. The tunellm rows go through
tunellm's own code as `tunellm train` does: `METHODS.get(name)`, its `check` hook
(a failing check prints "skipped: <reason>"), `load_model(ModelConfig(name_or_path=FOLDER), load_options=the
method's load_options)` (so QLoRA quantizes at load, as in a real run), `method.apply`,
`enable_activation_checkpointing` (non-reentrant), `method_optimizer`, the one-process strategy with
`train.bf16=true` for every row, `build_scheduler` (cosine, lr 2e-4, clipping 1.0) and the loop's own
`tunellm.train.loop._optimizer_step`, whose loss is `token_loss_sum` (an fp32 cross-entropy summed over the
trained tokens, divided by their count). The peer row uses the model's own loss (`labels=`).

Model: a LlamaConfig with Llama-2-7B's shape (hidden 4096, MLP 11008, 32 layers, 32 heads, vocab 32000,
6.74 B parameters), randomly initialised (seed 0) in bf16 and saved once with `save_pretrained` (13.5 GB) with
a WordLevel tokenizer of the same vocabulary, in `--model-dir` (kept, and reused when it already holds a model)
or a temporary folder (removed at the end). `--shape tiny` (hidden 64, 2 layers, vocab 1024) runs on the CPU to
check the script end to end; the QLoRA rows then print their skip reason.

Data: one batch of `--batch` x `--seq-len` random token ids (seeded), every token trained, no padding, the same
batch every step. Per step: wall time from the batch handed over to the optimizer step done (CUDA synchronised),
`--steps` steps of which the first `--warmup` are left out of the median. Memory: `torch.cuda.max_memory_allocated`
and `max_memory_reserved` over the whole child process (load included), `memory_allocated` after the method is
applied (weights, adapters, quantization state), the GPU's used memory from `torch.cuda.mem_get_info` (CUDA
context and bitsandbytes' paged, managed optimizer state included, which the allocator counters miss), and the
process's peak host RSS. An out-of-memory error is reported as OOM with the phase it hit and the peak until then.

On the CPU machine (here):
    .venv/bin/python bench/methods_memory.py --shape tiny --steps 3

On the GPU machine. It has torch, transformers, peft and accelerate but neither bitsandbytes nor pydantic (which
tunellm's config needs), and reaches no registry, so the wheels travel with the working tree. Once, here, in the
repo root (about 44 MiB of wheels; bitsandbytes 0.50.2 alone is 41 MiB and ships CUDA 11.8-13.2 binaries):
    echo /.whl/ >> .git/info/exclude
    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl bitsandbytes==0.50.2 pydantic==2.14.3 pydantic_core==2.50.4 \\
        annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
Then a device `run` with carry [".whl"] and this command (one call has 10 minutes; the 8 rows with the model
build may not fit in one, so split them in two calls, e.g. `--methods lora,dora,qlora,peer_qlora` and
`--methods ptuning_v2,freeze,full_bf16,full_fp32`; each call rebuilds the model unless the machine is still warm):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 || exit; python3 bench/methods_memory.py \\
        --model-dir /tmp/llama7b --methods lora,dora,qlora,peer_qlora --json $OUT/methods_memory_1.json \\
        2>&1 | tee $OUT/methods_memory_1.log

    python3 bench/methods_memory.py [--shape 7b|tiny] [--methods lora,dora,...] [--steps 10] [--warmup N]
        [--batch 4] [--seq-len 512] [--model-dir DIR] [--json FILE] [--threads N] [--child-timeout 480]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from methods_memory_row import DEFAULT_ROWS, ROWS, SHAPES, VERSIONED, has_model  # noqa: E402  (bench/ is on sys.path)

ROW_SCRIPT = Path(__file__).with_name("methods_memory_row.py")


def run_child(row: str, args: argparse.Namespace, folder: Path) -> dict:
    command = [
        sys.executable,
        str(ROW_SCRIPT),
        "--child",
        row,
        "--model-dir",
        str(folder),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--seq-len",
        str(args.seq_len),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    began = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"row": row, "status": "failed", "reason": f"timed out after {args.child_timeout} s"}
    wall = time.perf_counter() - began
    line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
        print(f"--- {row}: exit status {done.returncode}, last lines:\n" + "\n".join(tail), flush=True)
        last = tail[-1] if tail else ""
        return {"row": row, "status": "failed", "reason": f"exit {done.returncode}: {last[:160]}", "wall_s": wall}
    return {**json.loads(line.removeprefix("RESULT ")), "wall_s": wall}


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table_row(result: dict) -> str:
    status = result["status"]
    note = "ok" if status == "ok" else f"{status}: {result.get('reason', '')}"
    if status == "ok" and result.get("losses"):
        dtype = str(result.get("trainable_dtype")).removeprefix("torch.")
        losses = result["losses"]
        note = f"{result.get('optimizer')} on {dtype}; loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    if status == "skipped":
        cells = ["-"] * 9
    else:
        trainable = result.get("trainable")
        cells = [
            "-" if trainable is None else f"{trainable:,}",
            number(result.get("model_gib")),
            number(result.get("peak_allocated_gib")),
            number(result.get("peak_reserved_gib")),
            number(result.get("gpu_used_gib")),
            number(result.get("peak_rss_gib")),
            number(result.get("median_s"), 3),
            number(result.get("tokens_per_s"), 0),
            number(result.get("wall_s"), 0),
        ]
    return f"| {ROWS[result['row']]} | " + " | ".join(cells) + f" | {note} |"


def print_report(results: list[dict], args: argparse.Namespace, build_s: float | None) -> None:
    info = next((r for r in results if "versions" in r), {})
    found = info.get("versions", {})
    print()
    print(f"## methods_memory: {args.shape} shape, batch {args.batch} x {args.seq_len} tokens")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"- device: {info.get('device', '?')}; torch threads {info.get('threads', '?')}; "
        f"python {platform.python_version()}"
    )
    print("- versions: " + ", ".join(f"{name} {found.get(name, '?')}" for name in VERSIONED))
    timed = max(args.steps - args.warmup, 0)
    print(
        f"- {args.steps} steps a row, the first {args.warmup} left out ({timed} timed); activation checkpointing "
        "(non-reentrant; the peer's reentrant) except where the row says otherwise; "
        "train.bf16 (autocast); lr 2e-4, clipping 1.0; every token trained"
    )
    print(f"- PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')!r}")
    if build_s is not None:
        print(f"- model folder built in {build_s:.0f} s")
    print()
    print(
        "| method | trainable params | after apply GiB | peak allocated GiB | peak reserved GiB | GPU used GiB "
        "| peak RSS GiB | median s/step | tokens/s | row wall s | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for result in results:
        print(table_row(result))
    print()
    print(
        "after apply: allocated once the method is applied (weights, adapters, quantization state); GPU used: "
        "total - free from cudaMemGetInfo, max over the steps (CUDA context and managed memory such as the paged "
        "optimizer included); peak RSS: host memory of the row's process; row wall: the whole child process "
        "(imports, load, steps)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="7b")
    parser.add_argument("--methods", default=",".join(DEFAULT_ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps a row, warm-up included")
    parser.add_argument("--warmup", type=int, help="steps left out of the median (default: 3, at most half the steps)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--model-dir", type=Path, help="keep (or reuse) the random model here")
    parser.add_argument("--json", type=Path, help="also write the results here, updated after each row")
    parser.add_argument("--threads", type=int, help="torch threads in each row (default: 1 for tiny, torch's own)")
    parser.add_argument("--child-timeout", type=int, default=480, help="seconds a row may take")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(3, max(1, args.steps // 2))
    if args.threads is None and args.shape == "tiny":
        args.threads = 1
    rows = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in rows if name not in ROWS]
    if unknown:
        parser.error(f"unknown methods {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    with contextlib.ExitStack() as stack:
        folder = args.model_dir
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix=f"methods-memory-{args.shape}-"))
            stack.callback(shutil.rmtree, folder, True)
        build_s = None
        if has_model(folder):
            saved = json.loads((folder / "config.json").read_text())
            if any(saved.get(key) != value for key, value in SHAPES[args.shape].items()):
                parser.error(f"{folder} holds a model of another shape than --shape {args.shape}")
            print(f"reusing the model in {folder}", flush=True)
        else:
            began = time.perf_counter()
            command = [sys.executable, str(ROW_SCRIPT), "--build", "--shape", args.shape, "--model-dir", str(folder)]
            subprocess.run(command, check=True)
            build_s = time.perf_counter() - began
        results: list[dict] = []
        for row in rows:
            result = run_child(row, args, folder)
            results.append(result)
            print(table_row(result), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
    print_report(results, args, build_s)


if __name__ == "__main__":
    main()
