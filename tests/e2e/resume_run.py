"""A tiny LoRA run for test_resume.py: `python -m tests.e2e.resume_run OUTPUT_DIR [options]` from the repo root.

30 steps, a checkpoint every 5, dropout on (so RNG restore matters), gradient accumulation over rows of different
lengths, evaluation every 10 steps, resume=auto. Options to be killed at a chosen moment:
--step-delay S            sleep S seconds after each step, so a SIGKILL from outside lands at a random step
--hang-in-save N --marker P  inside the writing of checkpoint N (files written, not yet renamed) touch P and
                          wait to be killed
"""

from __future__ import annotations

import argparse
import time
import types
from pathlib import Path


def rows(n: int, seed: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(1, 1024, int(rng.integers(4, 32))).astype(np.int32)
        labels = ids.copy()
        labels[: len(ids) // 3] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def install_hooks(hang_in_save: int | None, marker: str | None, step_delay: float) -> None:
    from tunellm.train import checkpoint, log

    if hang_in_save is not None:
        fsync_tree = checkpoint._fsync_tree

        def hang(folder: Path) -> None:
            fsync_tree(folder)
            if folder.name == f"{checkpoint.TMP_PREFIX}{hang_in_save}":
                Path(marker).touch()
                time.sleep(600)

        checkpoint._fsync_tree = hang
    if step_delay:
        advance = log.RunLog.advance

        def slow_advance(self, step: int, epoch: float) -> None:
            advance(self, step, epoch)
            time.sleep(step_delay)

        log.RunLog.advance = slow_advance


def tiny_lora_model():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "v_proj"])
    return get_peft_model(LlamaForCausalLM(config), lora)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--hang-in-save", type=int, default=None)
    parser.add_argument("--marker", default=None)
    args = parser.parse_args(argv)

    import torch

    from tunellm.config.schema import TrainConfig
    from tunellm.train import fit

    torch.set_num_threads(1)
    install_hooks(args.hang_in_save, args.marker, args.step_delay)
    config = TrainConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=30,
        learning_rate=5e-3,
        warmup_ratio=0.1,
        weight_decay=0.01,
        logging_steps=1,
        save_steps=5,
        eval_steps=10,
        save_total_limit=2,
        report_to=[],
        resume="auto",
    )
    tokenizer = types.SimpleNamespace(pad_token_id=0)
    fit(tiny_lora_model(), tokenizer, rows(22, 0), rows(4, 1), config, show_progress=False)


if __name__ == "__main__":
    main()
