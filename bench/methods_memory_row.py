"""One row of bench/methods_memory.py, run in its own process: build the random model (`--build`), or train one
method for a few steps and print its measurements as `RESULT {json}` (`--child ROW`). See methods_memory.py.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import resource
import statistics
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
    from tunellm.methods.freeze import FreezeMethod
    from tunellm.methods.full import FullMethod
    from tunellm.methods.lora import LoraMethod
    from tunellm.methods.ptuning_v2 import PTuningV2Method
    from tunellm.methods.qlora import QLoraMethod

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
    from tunellm.train.strategy import make_strategy

    strategy = make_strategy(train)
    if train.gradient_checkpointing:
        enable_activation_checkpointing(model)
    note["phase"] = "optimizer"
    model, optimizer = strategy.prepare(model, lambda bare: method_optimizer(bare, config, method))
    scheduler = build_scheduler(optimizer, train, steps)
    model.train()
    note["optimizer"] = type(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer).__name__
    note["dtype"] = str(next(p.dtype for p in model.parameters() if p.requires_grad))

    def step(data: dict[str, Any]) -> float:
        loss_sum, tokens = _optimizer_step(strategy, model, optimizer, scheduler, [data], train)[:2]
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
    from tunellm.config.schema import RunConfig, TrainConfig
    from tunellm.methods import METHODS
    from tunellm.methods.base import hook

    options = method_config(row)
    check = hook(METHODS.get(options.name), "check")
    try:
        if check is not None:
            check(RunConfig(method=options, train=TrainConfig(gradient_checkpointing=row not in NO_CHECKPOINTING)))
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


def child_main() -> None:
    parser = argparse.ArgumentParser(description="one row of bench/methods_memory.py")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="7b")
    parser.add_argument("--child", choices=tuple(ROWS))
    parser.add_argument("--build", action="store_true")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.build:
        build_model(args.shape, args.model_dir)
        return
    result = run_row(args.child, args.model_dir, args.steps, args.warmup, args.batch, args.seq_len, args.threads)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    child_main()
