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
              mask still covers the prefix, and the forward fails (size 512 vs 640)
  ptuning_v2_ckpt  the same with checkpointing, as `tunellm train` runs it with train.gradient_checkpointing=true
              (not in the default rows: it fails as above until that is fixed; run it to check a fix)
  freeze      the last 2 decoder layers trained in full
  full_bf16   every weight, pure_bf16 (weights, gradients and AdamW state in bf16)
  full_fp32   every weight, fp32 master weights and fp32 AdamW state, bf16 autocast (expected OOM on an 80 GB GPU)
  peer_qlora  AutoModelForCausalLM.from_pretrained(quantization_config=the same NF4 config) +
              prepare_model_for_kbit_training (its default: reentrant checkpointing) + get_peft_model +
              bnb.optim.PagedAdamW8bit, a plain loop under torch.autocast(bf16) with the model's own loss

The tunellm rows go through tunellm's own code as `tunellm train` does: `METHODS.get(name)`, its `check` hook
(a failing check prints "skipped: <reason>"), `load_model(ModelConfig(name_or_path=FOLDER), load_options=the
method's load_options)` (so QLoRA quantizes at load, as in a real run), `method.apply`,
`enable_activation_checkpointing` (non-reentrant), `method_optimizer`, an accelerate `Accelerator` with
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
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the GPU machine runs the working tree without installing tunellm
    sys.path.insert(0, str(ROOT))

SEED, LR = 42, 2e-4
GIB = 1024**3
SHAPES: dict[str, dict[str, Any]] = {  # RoPE theta: LlamaConfig's default, 10,000 as in Llama-2
    "7b": {  # Llama-2-7B
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
    },
    "tiny": {
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
    },
}
ROWS: dict[str, str] = {
    "lora": "lora r=8 all-linear",
    "dora": "lora r=8 all-linear + DoRA",
    "qlora": "qlora 4-bit NF4 + double quant, paged AdamW 8-bit",
    "ptuning_v2": "ptuning_v2 pre_seq_len 128, no checkpointing",
    "ptuning_v2_ckpt": "ptuning_v2 pre_seq_len 128, checkpointing",
    "freeze": "freeze, last 2 layers",
    "full_bf16": "full, pure_bf16",
    "full_fp32": "full, fp32 weights + AdamW, bf16 autocast",
    "peer_qlora": "peer: transformers + peft + bnb QLoRA",
}
DEFAULT_ROWS = [row for row in ROWS if row != "ptuning_v2_ckpt"]
NO_CHECKPOINTING = {"ptuning_v2"}  # see the docstring
VERSIONED = ("torch", "transformers", "peft", "accelerate", "bitsandbytes")


def method_config(row: str) -> Any:
    """The tunellm method options of a row."""
    from tunellm.config.methods import FreezeMethod, FullMethod, LoraMethod, PTuningV2Method, QLoraMethod

    return {
        "lora": lambda: LoraMethod(r=8, target_modules="all-linear"),
        "dora": lambda: LoraMethod(r=8, target_modules="all-linear", use_dora=True),
        "qlora": lambda: QLoraMethod(
            r=8, target_modules="all-linear", bits=4, quant_type="nf4", double_quant=True, optim="paged_adamw_8bit"
        ),
        "ptuning_v2": lambda: PTuningV2Method(pre_seq_len=128),
        "ptuning_v2_ckpt": lambda: PTuningV2Method(pre_seq_len=128),
        "freeze": lambda: FreezeMethod(trainable_layers=2),
        "full_bf16": lambda: FullMethod(pure_bf16=True),
        "full_fp32": lambda: FullMethod(pure_bf16=False),
    }[row]()


# ---------------------------------------------------------------------------------------------- the model folder


def has_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def build_model(shape: str, folder: Path) -> None:
    """Random-initialised Llama of `shape` in bf16 (fp32 for tiny), saved with a WordLevel tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    fields = SHAPES[shape]
    config = LlamaConfig(**fields, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    dtype = torch.bfloat16 if shape == "7b" else torch.float32
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 6.7 B weights on the CPU takes minutes
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    names = ["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(fields["vocab_size"] - 3))]
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(names)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    print(f"built {sum(p.numel() for p in model.parameters()):,} parameters ({dtype}) on {device} into {folder}")


# ---------------------------------------------------------------------------------------------- one row (child)


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def is_oom(error: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(error, oom) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def random_batch(vocab: int, batch: int, length: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def setup_tunellm(row: str, folder: Path, output_dir: str, steps: int, batch: int, note: dict) -> Any:
    """Load, apply, checkpoint and build the optimizer as `tunellm train` does; return a step function."""
    import transformers

    from tunellm.config.schema import ModelConfig, RunConfig, TrainConfig
    from tunellm.methods import METHODS, enable_activation_checkpointing
    from tunellm.methods.base import hook
    from tunellm.models.load import load_model
    from tunellm.train.loop import _optimizer_step
    from tunellm.train.optim import build_scheduler, method_optimizer

    options = method_config(row)
    method = METHODS.get(options.name)
    load_options = hook(method, "load_options")
    transformers.set_seed(SEED)
    note["phase"] = "load"
    model, _, family = load_model(
        ModelConfig(name_or_path=str(folder)), load_options=load_options(options) if load_options else None
    )
    note["phase"] = "apply"
    model = method.apply(model, options, family)
    train = TrainConfig(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=LR,
        bf16=True,
        gradient_checkpointing=row not in NO_CHECKPOINTING,
        report_to=[],
        seed=SEED,
    )
    config = RunConfig(model=ModelConfig(name_or_path=str(folder)), method=options, train=train)
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16")
    if train.gradient_checkpointing:
        enable_activation_checkpointing(model)
    note["phase"] = "optimizer"
    optimizer = method_optimizer(model, config, method)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, train, steps)
    model.train()
    note["optimizer"] = type(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer).__name__
    note["dtype"] = str(next(p.dtype for p in model.parameters() if p.requires_grad))

    def step(data: dict[str, Any]) -> float:
        loss_sum, tokens, _, _ = _optimizer_step(accelerator, model, optimizer, scheduler, [data], train)
        return float(loss_sum) / max(tokens, 1)

    return model, step


def setup_peer(folder: Path, note: dict) -> Any:
    """QLoRA the usual way: bnb 4-bit load, prepare_model_for_kbit_training, get_peft_model, PagedAdamW8bit."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed

    set_seed(SEED)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    note["phase"] = "load"
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), quantization_config=quantization, dtype=torch.bfloat16, device_map={"": 0}
    )
    note["phase"] = "apply"
    model = prepare_model_for_kbit_training(model)  # its default: gradient checkpointing on
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.config.use_cache = False
    note["phase"] = "optimizer"
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = bnb.optim.PagedAdamW8bit(trainable, lr=LR)
    model.train()
    note["optimizer"] = type(optimizer).__name__
    note["dtype"] = str(trainable[0].dtype)

    def step(data: dict[str, Any]) -> float:
        data = {key: value.to("cuda", non_blocking=True) for key, value in data.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**data, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return model, step


def skip_reason(row: str) -> str | None:
    """Why this row cannot run here (the method's own `check` hook for tunellm rows), or None."""
    import importlib.util

    import torch

    from tunellm.errors import TunellmError

    if row == "peer_qlora":
        if not torch.cuda.is_available():
            return "needs a CUDA GPU (bitsandbytes 4-bit)"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed"
        return None
    from tunellm.methods import METHODS
    from tunellm.methods.base import hook

    options = method_config(row)
    check = hook(METHODS.get(options.name), "check")
    try:
        if check is not None:
            check(options)
    except TunellmError as error:
        return error.message
    return None


def run_row(row: str, folder: Path, steps: int, warmup: int, batch: int, length: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    result: dict[str, Any] = {
        "row": row,
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }
    reason = skip_reason(row)
    if reason is not None:
        return {**result, "status": "skipped", "reason": reason}
    note: dict[str, Any] = {"phase": "start"}
    times: list[float] = []
    losses: list[float] = []
    used = 0
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as output_dir:
            if row == "peer_qlora":
                model, step = setup_peer(folder, note)
            else:
                model, step = setup_tunellm(row, folder, output_dir, steps, batch, note)
            result["setup_s"] = time.perf_counter() - started
            result["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if cuda:
                torch.cuda.synchronize()
                result["model_gib"] = torch.cuda.memory_allocated() / GIB
            data = random_batch(model.config.vocab_size, batch, length)
            for number in range(steps):
                note["phase"] = f"step {number + 1}"
                began = time.perf_counter()
                loss = step(data)  # float(): waits for the device
                if cuda:
                    torch.cuda.synchronize()
                    free, total = torch.cuda.mem_get_info()
                    used = max(used, total - free)
                times.append(time.perf_counter() - began)
                losses.append(loss)
        result["status"] = "ok"
    except Exception as error:  # an OOM is a result; anything else fails the row with its traceback
        if not is_oom(error):
            raise
        result["status"] = "OOM"
        result["reason"] = f"out of memory at {note['phase']}"
    result.update(
        {
            "optimizer": note.get("optimizer"),
            "trainable_dtype": note.get("dtype"),
            "step_s": times,
            "losses": losses,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        }
    )
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        result["gpu_used_gib"] = used / GIB if used else None
        result["gpu_total_gib"] = torch.cuda.mem_get_info()[1] / GIB
    timed = times[warmup:]
    if timed:
        result["median_s"] = statistics.median(timed)
        result["tokens_per_s"] = batch * length / result["median_s"]
    return result


# ---------------------------------------------------------------------------------------------- the parent


def run_child(row: str, args: argparse.Namespace, folder: Path) -> dict:
    command = [
        sys.executable,
        __file__,
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
    parser.add_argument("--child", choices=tuple(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(3, max(1, args.steps // 2))
    if args.threads is None and args.shape == "tiny":
        args.threads = 1
    if args.build:
        build_model(args.shape, args.model_dir)
        return
    if args.child:
        result = run_row(args.child, args.model_dir, args.steps, args.warmup, args.batch, args.seq_len, args.threads)
        print("RESULT " + json.dumps(result))
        return
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
            command = [sys.executable, __file__, "--build", "--shape", args.shape, "--model-dir", str(folder)]
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
