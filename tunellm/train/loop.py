"""The training loop: one explicit function on accelerate, the loss a mean over trained tokens.

Under gradient accumulation the micro-batches of one optimizer step are collated up front, their trained tokens
counted, and each micro-batch's summed token loss divided by that window's count: the gradient equals one big
batch's, whatever the row lengths and padding.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunellm.config.schema import RunConfig, TrainConfig
from tunellm.data.pack import collate, real_tokens
from tunellm.errors import ConfigError, DataError
from tunellm.methods import enable_activation_checkpointing
from tunellm.train.batching import Batcher, make_batcher
from tunellm.train.checkpoint import (
    config_changes,
    find_resume,
    list_checkpoints,
    load_checkpoint,
    load_trainable,
    prune,
    remove_partial,
    save_checkpoint,
    write_best,
)
from tunellm.train.guard import BadStepGuard, skip_batches, skip_step, step_is_finite
from tunellm.train.log import RunLog, check_report_to
from tunellm.train.loss import IGNORE, LossPath, token_loss_sum, trained_tokens
from tunellm.train.optim import StepPlan, build_scheduler, method_optimizer
from tunellm.train.state import TrainState, check_resume_data, data_key, restore_rng

log = logging.getLogger(__name__)

FORCE_KEY = "train.resume_data_changed"  # set for one resume, not a change of the run's config

__all__ = ["IGNORE", "FitResult", "collate", "fit", "token_loss_sum", "trained_tokens"]


@dataclass
class FitResult:
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _sum_over_processes(accelerator: Any, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    total = accelerator.reduce(torch.tensor(value, dtype=torch.float64, device=accelerator.device), "sum")
    return float(total)


def accumulate_gradients(
    accelerator: Any, model: Any, batches: list[dict[str, torch.Tensor]], loss: LossPath = "chunked"
) -> tuple[torch.Tensor, int]:
    """Backward over one optimizer step's micro-batches; return (summed token loss, trained tokens), all processes."""
    tokens = int(_sum_over_processes(accelerator, sum(trained_tokens(b) for b in batches)))
    # DDP averages gradients over processes, hence the factor: the result is sum(loss) / tokens of all processes.
    scale = accelerator.num_processes / max(tokens, 1)
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for i, batch in enumerate(batches):
        sync = contextlib.nullcontext() if i == len(batches) - 1 else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():  # the chunked loss calls the model's body, under the wrapper's autocast
                summed = token_loss_sum(model, _to(batch, accelerator.device), loss)[0]
            accelerator.backward(summed * scale)
        loss_sum += summed.detach()
    if accelerator.num_processes > 1:
        loss_sum = accelerator.reduce(loss_sum, "sum")
    return loss_sum, tokens


@torch.no_grad()
def evaluate(
    accelerator: Any, model: Any, data: Any, batch_size: int, pad_id: int, loss: LossPath = "chunked"
) -> dict[str, float]:
    """Dev-set loss as the mean over all trained tokens (not a mean of batch means)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    step = batch_size * accelerator.num_processes
    for start in range(accelerator.process_index * batch_size, len(data), step):
        batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))], pad_id)
        with accelerator.autocast():
            summed, tokens = token_loss_sum(model, _to(batch, accelerator.device), loss)
        totals[0] += summed
        totals[1] += tokens
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, "sum")
    model.train(was_training)
    return {"eval_loss": float(totals[0] / totals[1].clamp(min=1))}


def pad_token_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0  # any id works: padded positions are masked out of attention and loss


def _setup(cfg: TrainConfig, train_data: Any, accelerator: Any | None) -> tuple[Any, Path]:
    check_report_to(cfg.report_to)
    if len(train_data) == 0:
        raise DataError("the training set is empty", hint="check data.train and the data filters")
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "no")
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in remove_partial(output_dir):
            log.warning("removed %s, a checkpoint that a killed run did not finish writing", path)
    accelerator.wait_for_everyone()
    return accelerator, output_dir


def greater_is_better(cfg: TrainConfig) -> bool:
    """`train.greater_is_better`, or when unset the direction of `best_metric` (lower for eval_loss)."""
    if cfg.greater_is_better is not None:
        return cfg.greater_is_better
    from tunellm.evaluate.metrics import higher_is_better  # same stage; loaded only when it is needed

    return higher_is_better(cfg.best_metric)


def _eval_and_pick_best(cfg: TrainConfig, state: TrainState, metrics: dict[str, float]) -> bool:
    if cfg.best_metric not in metrics:
        raise ConfigError(
            f"best_metric '{cfg.best_metric}' is not computed", field="train.best_metric", expected=", ".join(metrics)
        )
    value = metrics[cfg.best_metric]
    if not state.improves(value, greater_is_better(cfg)):
        return False
    state.best_step, state.best_value = state.global_step, value
    return True


def _optimizer_step(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    batches: list[dict[str, torch.Tensor]],
    cfg: TrainConfig,
) -> tuple[torch.Tensor, int, torch.Tensor | None, float, bool]:
    """One optimizer step; returns (summed token loss, trained tokens, grad norm before clipping, lr it ran with,
    whether it stepped: a non-finite loss or gradient skips it, see guard.py)."""
    loss_sum, tokens = accumulate_gradients(accelerator, model, batches, cfg.loss)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm or math.inf)
    lr = optimizer.param_groups[0]["lr"]
    if not step_is_finite(accelerator, loss_sum, grad_norm):
        skip_step(accelerator, optimizer)
        return loss_sum, tokens, grad_norm, lr, False
    optimizer.step()
    if not optimizer.step_was_skipped:  # fp16 overflow: the scaler skipped the step, so the schedule waits
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, tokens, grad_norm, lr, True


def fit(
    model: Any,
    tokenizer: Any,
    train_data: Any,
    dev_data: Any | None,
    config: RunConfig | TrainConfig,
    *,
    accelerator: Any | None = None,
    method: Any | None = None,
    show_progress: bool = True,
    dev_scorer: Callable[[Any], dict[str, float]] | None = None,
    batcher: Batcher | None = None,
) -> FitResult:
    """Train `model` (a peft model or any PreTrainedModel) on `train_data` rows {input_ids, labels}.

        Resumes per `train.resume`, evaluates on `dev_data` (may be None) every `eval_steps`, checkpoints every
        `save_steps`, at each new best and at the end. `method` (a METHODS plug-in) saves and restores what it trained
    and may shape the optimizer; without it the model's own save_pretrained is used.
        `dev_scorer(model)` adds task metrics (generated on dev rows) to each evaluation, for `best_metric`.
        `batcher` forms the micro-batches (default: the one `train.batching` names, see `train/batching.py`).
    """
    cfg = config.train if isinstance(config, RunConfig) else config
    resolved = (
        config.model_dump(mode="json") if isinstance(config, RunConfig) else {"train": cfg.model_dump(mode="json")}
    )
    accelerator, output_dir = _setup(cfg, train_data, accelerator)
    resume_from = find_resume(output_dir, cfg.resume, method=method)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    if resume_from is None and cfg.init_adapter:
        load_trainable(model, Path(cfg.init_adapter), method)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    optimizer = method_optimizer(model, config, method)
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id, rank, world = pad_token_id(tokenizer), accelerator.process_index, accelerator.num_processes
    batcher = batcher or make_batcher(config, accelerator.unwrap_model(model), train_data, pad_id, rank, world)
    plan = StepPlan.make(cfg, lambda epoch: len(batcher.epoch(epoch)))
    scheduler = build_scheduler(optimizer, cfg, plan.total_steps)
    key = data_key(train_data)
    state, rng = TrainState(data_key=key), None
    parts = {
        "accelerator": accelerator,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "method": method,
    }
    if resume_from is not None:
        state, rng = load_checkpoint(resume_from, **parts)
        check_resume_data(state, key, cfg.resume_data_changed, resume_from)
        changed = [k for k in config_changes(resume_from, resolved) if k not in ("train.resume", FORCE_KEY)]
        if changed:
            log.warning("config changed since %s: %s", resume_from, ", ".join(changed))
        log.info("resuming from %s (step %d)", resume_from, state.global_step)
    with RunLog(
        output_dir,
        total_steps=plan.total_steps,
        start_step=state.global_step,
        history=state.history,
        config=resolved,
        report_to=cfg.report_to,
        show=show_progress,
        enabled=accelerator.is_main_process,
    ) as runlog:
        saving = {**parts, "tokenizer": tokenizer, "config": resolved}
        pending = torch.tensor(state.pending_loss, dtype=torch.float64, device=accelerator.device)
        model.train()
        if rng is not None:
            restore_rng(rng)  # last, so nothing above draws from the restored generators
        started = time.monotonic() - state.elapsed
        window_started, window_tokens = time.monotonic(), 0
        guard = BadStepGuard(cfg.max_bad_steps)
        while state.global_step < plan.total_steps:
            order = batcher.epoch(state.epoch)
            micro = order[state.batch_in_epoch : state.batch_in_epoch + cfg.gradient_accumulation_steps]
            batches = [batcher.collate([train_data[i] for i in rows]) for rows in micro]
            loss_sum, tokens, grad_norm, lr, stepped = _optimizer_step(
                accelerator, model, optimizer, scheduler, batches, cfg
            )
            if not stepped:  # nothing changed; move past the bad rows, and stop (saving this state) if it persists
                skip_batches(state, len(micro), len(order))
                if guard.bad(state.global_step, train_data, micro, rank):
                    state.pending_loss = float(pending)
                    raise guard.stop_error(state.global_step, save_checkpoint(output_dir, state, **saving))
                continue
            guard.good()
            epoch = state.advance(len(micro), len(order))
            step, last = state.global_step, state.global_step == plan.total_steps
            pending += loss_sum
            state.pending_tokens += tokens
            window_tokens += world * sum(real_tokens(b) for b in batches)
            state.elapsed = time.monotonic() - started
            runlog.advance(step, epoch)

            if step % cfg.logging_steps == 0 or last:
                now = time.monotonic()
                entry = {
                    "step": step,
                    "epoch": epoch,
                    "loss": float(pending) / max(state.pending_tokens, 1),
                    "lr": lr,
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "tokens_per_s": window_tokens / max(now - window_started, 1e-9),
                    "elapsed": round(state.elapsed, 3),
                }
                state.history.append(entry)
                runlog.write(entry)
                pending.zero_()
                state.pending_tokens, window_started, window_tokens = 0, now, 0
            improved = evaluated = False
            if dev_data is not None and len(dev_data) > 0 and (step % cfg.eval_steps == 0 or last):
                metrics = evaluate(accelerator, model, dev_data, cfg.per_device_eval_batch_size, pad_id, cfg.loss)
                if dev_scorer is not None:
                    with accelerator.autocast():
                        metrics.update(dev_scorer(accelerator.unwrap_model(model)))
                entry = {"step": step, "epoch": epoch, **metrics, "elapsed": round(time.monotonic() - started, 3)}
                state.history.append(entry)
                runlog.write(entry)
                improved, evaluated = _eval_and_pick_best(cfg, state, metrics), True
            if step % cfg.save_steps == 0 or last or improved:
                state.pending_loss = float(pending)
                save_checkpoint(output_dir, state, **saving)
                if accelerator.is_main_process:
                    write_best(output_dir, state, cfg.best_metric, greater_is_better(cfg))
                    prune(output_dir, cfg.save_total_limit, state.best_step)
            if evaluated or step % cfg.save_steps == 0 or last:
                runlog.plot(state.history)
    return _result(output_dir, state)


def _result(output_dir: Path, state: TrainState) -> FitResult:
    train = [e["loss"] for e in state.history if "loss" in e]
    evals = [e["eval_loss"] for e in state.history if "eval_loss" in e]
    checkpoints = list_checkpoints(output_dir)
    best = output_dir / f"step-{state.best_step}" if state.best_step is not None else None
    return FitResult(
        global_step=state.global_step,
        train_loss=train[-1] if train else None,
        eval_loss=evals[-1] if evals else None,
        last_checkpoint=checkpoints[-1] if checkpoints else None,
        best_checkpoint=best,
        history=state.history,
    )
