"""One stack of bench/throughput.py, in its own process: train `--steps` optimizer steps on the prepared rows and
write real tokens/s, peak memory and the per-step losses as JSON. See throughput.py for the stacks."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the GPU machine runs the working tree without installing tunellm
    sys.path.insert(0, str(ROOT))

SEED, LR = 42, 2e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STACKS = {
    "trainer_padded": "Trainer + peft, DataCollatorForSeq2Seq, random order (the predecessor stack)",
    "trainer_grouped": "Trainer + peft, group_by_length",
    "trainer_flatten": "Trainer + peft, DataCollatorWithFlattening (padding-free)",
    "tunellm_padded": "tunellm, train.batching=padded",
    "tunellm_packed": "tunellm, train.batching=packed (the default)",
    "tunellm_packed_reference": "tunellm packed, train.loss=reference",
}


def load_rows(path: Path, vocab: int) -> list[dict[str, Any]]:
    import numpy as np

    saved = np.load(path)
    ids, labels, offsets = saved["input_ids"] % vocab, saved["labels"], saved["offsets"]
    labels = np.where(labels >= 0, labels % vocab, labels)
    return [
        {"input_ids": ids[a:b].tolist(), "labels": labels[a:b].tolist()}
        for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]


def load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from tunellm.config.schema import ModelConfig
    from tunellm.models.load import load_model

    config = ModelConfig(name_or_path=args.model_dir) if args.model_dir else ModelConfig()
    return load_model(config, device=args.device)


def run_tunellm(args: argparse.Namespace, model: Any, tokenizer: Any, family: Any, rows: list) -> list[dict]:
    from tunellm.config.schema import DataConfig, RunConfig, TrainConfig
    from tunellm.methods import METHODS
    from tunellm.methods.lora import LoraMethod
    from tunellm.train import fit

    method = LoraMethod(r=8, target_modules=TARGETS)
    train = TrainConfig(
        output_dir=tempfile.mkdtemp(prefix="throughput-"), max_steps=args.steps, learning_rate=LR,
        lr_scheduler_type="constant", per_device_train_batch_size=args.rows_per_step, logging_steps=1,
        save_steps=10**6, eval_steps=10**6, report_to=[], resume="never", seed=SEED, bf16=args.device == "cuda",
        gradient_checkpointing=args.checkpointing, tokens_per_batch=args.tokens_per_step,
        batching="padded" if args.stack == "tunellm_padded" else "packed",
        loss="reference" if args.stack.endswith("_reference") else "chunked",
    )  # fmt: skip
    config = RunConfig(data=DataConfig(cutoff_len=args.cutoff), method=method, train=train)
    from tunellm.data import pack
    from tunellm.train import loop

    model = METHODS.get("lora").apply(model, method, family)
    marks, tokens = [clocks()], []
    step, count = loop._optimizer_step, pack.real_tokens

    def timed_step(*args: Any, **kwargs: Any) -> Any:
        result = step(*args, **kwargs)
        marks.append(clocks())
        return result

    def counted(batch: Any) -> int:
        tokens.append(count(batch))
        return tokens[-1]

    loop._optimizer_step, loop.real_tokens = timed_step, counted  # the bench's clock; the loop is unchanged
    history = fit(model, tokenizer, rows, None, config, method=METHODS.get("lora"), show_progress=False).history
    per_step = len(tokens) // max(len(marks) - 1, 1)  # micro-batches per step (1 here)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return [
        {"loss": loss, "tokens": sum(tokens[i * per_step : (i + 1) * per_step]), **elapsed(a, b)}
        for i, (loss, a, b) in enumerate(zip(losses, marks, marks[1:], strict=False))
    ]


def clocks() -> tuple[float, float]:
    """(wall, CPU time of the whole process): on a shared machine the CPU time is the steadier measure of work."""
    return time.monotonic(), time.process_time()


def elapsed(start: tuple[float, float], end: tuple[float, float]) -> dict[str, float]:
    return {"seconds": end[0] - start[0], "cpu_seconds": end[1] - start[1]}


class Counting:
    """The peer's collator, counting the real tokens of every batch it makes."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.tokens = inner, []

    def __call__(self, features: list[dict]) -> Any:
        self.tokens.append(sum(len(f["input_ids"]) for f in features))
        return self.inner(features)


def run_trainer(args: argparse.Namespace, model: Any, tokenizer: Any, rows: list) -> list[dict]:
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS))
    if args.stack == "trainer_flatten":
        collator = Counting(DataCollatorWithFlattening())
    else:
        collator = Counting(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    marks, losses = [], []

    class Clock(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            marks.append(clocks())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            marks.append(clocks())

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict | None = None, **__: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="throughput-"), per_device_train_batch_size=args.rows_per_step,
        max_steps=args.steps, learning_rate=LR, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to=[], seed=SEED, bf16=args.device == "cuda",
        train_sampling_strategy="group_by_length" if args.stack == "trainer_grouped" else "random",
        use_cpu=args.device == "cpu", gradient_checkpointing=args.checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, remove_unused_columns=False,
        dataloader_num_workers=0, max_grad_norm=1.0, disable_tqdm=True, optim="adamw_torch",
    )  # fmt: skip
    trainer = Trainer(model=model, args=training, train_dataset=rows, data_collator=collator, callbacks=[Clock()])
    trainer.train()
    return [
        {"loss": loss, "tokens": tokens, **elapsed(a, b)}
        for loss, tokens, a, b in zip(losses, collator.tokens, marks, marks[1:], strict=False)
    ]


def peak_memory(device: str) -> dict[str, float]:
    result = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if device == "cuda":
        import torch

        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", choices=STACKS, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--rows", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows-per-step", type=int, required=True)
    parser.add_argument("--tokens-per-step", type=int, required=True)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model, tokenizer, family = load(args)
    rows = load_rows(args.rows, model.config.vocab_size)
    if args.stack.startswith("tunellm"):
        steps = run_tunellm(args, model, tokenizer, family, rows)
    else:
        steps = run_trainer(args, model, tokenizer, rows)
    result = {"stack": args.stack, "steps": steps, **peak_memory(args.device)}
    args.out.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
