"""The training loop: one explicit function, the loss a mean over trained tokens.

Under gradient accumulation the micro-batches of one optimizer step are collated up front, their trained tokens
counted (over all processes), and each micro-batch's summed token loss divided by that window's count: the gradient
equals one big batch's, whatever the row lengths, padding and number of processes. What an engine (DDP, FSDP2,
DeepSpeed) does differently is the strategy's (`train/strategy/`), so this file has no engine branch.
"""

from __future__ import annotations

import logging
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
from tunellm.train.state import TrainState, check_resume_data, data_key, restore_rng, resume_on
from tunellm.train.strategy import Strategy, make_strategy

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


def accumulate_gradients(
    strategy: Strategy, model: Any, batches: list[dict[str, torch.Tensor]], loss: LossPath = "chunked"
) -> tuple[torch.Tensor, int]:
    """Backward over one optimizer step's micro-batches; return (summed token loss, trained tokens), all processes."""
    return strategy.accumulate(model, batches, loss)


@torch.no_grad()
def evaluate(
    strategy: Strategy, model: Any, data: Any, batch_size: int, pad_id: int, loss: LossPath = "chunked"
) -> dict[str, float]:
    """Dev-set loss as the mean over all trained tokens (not a mean of batch means); each process scores its own
    batches of rows, then the sums are added up. Every process runs as many forwards (a sharded model's forward
    is a collective): one short of batches runs an empty-weighted one."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=strategy.device)
    step = batch_size * strategy.world
    for start in range(0, len(data), step):
        first = start + strategy.rank * batch_size
        mine = range(first, min(first + batch_size, len(data)))
        rows = [data[i] for i in mine] or [data[start]]  # a stand-in whose result is not counted
        strategy.progress("eval batch")
        with strategy.autocast():
            summed, tokens = token_loss_sum(model, _to(collate(rows, pad_id), strategy.device), loss)
        if len(mine):
            totals[0] += summed
            totals[1] += tokens
    totals = strategy.reduce_sum(totals)
    model.train(was_training)
    return {"eval_loss": float(totals[0] / totals[1].clamp(min=1))}


def pad_token_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0  # any id works: padded positions are masked out of attention and loss


def _setup(cfg: TrainConfig, train_data: Any, strategy: Strategy | None) -> tuple[Strategy, Path]:
    check_report_to(cfg.report_to)
    if len(train_data) == 0:
        raise DataError("the training set is empty", hint="check data.train and the data filters")
    strategy = strategy or make_strategy(cfg)
    output_dir = Path(cfg.output_dir)
    if strategy.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in remove_partial(output_dir):
            log.warning("removed %s, a checkpoint that a killed run did not finish writing", path)
    strategy.barrier()
    return strategy, output_dir


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
    strategy: Strategy,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    batches: list[dict[str, torch.Tensor]],
    cfg: TrainConfig,
) -> tuple[torch.Tensor, int, torch.Tensor | None, float, bool]:
    """One optimizer step; returns (summed token loss, trained tokens, grad norm before clipping, lr it ran with,
    whether it stepped: a non-finite loss or gradient skips it, see guard.py)."""
    loss_sum, tokens = strategy.accumulate(model, batches, cfg.loss)
    grad_norm = strategy.clip(model, optimizer, cfg.max_grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    if not step_is_finite(strategy, loss_sum, grad_norm):
        skip_step(strategy, model, optimizer)
        return loss_sum, tokens, grad_norm, lr, False
    measured = strategy.step(model, optimizer, scheduler)  # DeepSpeed clips inside its step, and says the norm
    return loss_sum, tokens, measured if measured is not None else grad_norm, lr, True


def fit(
    model: Any,
    tokenizer: Any,
    train_data: Any,
    dev_data: Any | None,
    config: RunConfig | TrainConfig,
    *,
    strategy: Strategy | None = None,
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
        `strategy` runs one process or several (default: the one `train.distributed` names, `train/strategy/`).
    """
    cfg = config.train if isinstance(config, RunConfig) else config
    resolved = (
        config.model_dump(mode="json") if isinstance(config, RunConfig) else {"train": cfg.model_dump(mode="json")}
    )
    strategy, output_dir = _setup(cfg, train_data, strategy)
    resume_from = find_resume(output_dir, cfg.resume, method=method)
    from transformers import set_seed

    set_seed(cfg.seed)
    if resume_from is None and cfg.init_adapter:
        load_trainable(model, Path(cfg.init_adapter), method)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model, optimizer = strategy.prepare(model, lambda bare: method_optimizer(bare, config, method))
    pad_id, rank, world = pad_token_id(tokenizer), strategy.rank, strategy.world
    batcher = batcher or make_batcher(config, strategy.unwrap(model), train_data, pad_id, rank, world)
    plan = StepPlan.make(cfg, lambda epoch: len(batcher.epoch(epoch)))
    scheduler = build_scheduler(optimizer, cfg, plan.total_steps)
    key = data_key(train_data)
    state, rng = TrainState(data_key=key, processes=world), None
    parts = {
        "strategy": strategy,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "method": method,
    }
    if resume_from is not None:
        state, rng = load_checkpoint(resume_from, **parts)
        check_resume_data(state, key, cfg.resume_data_changed, resume_from)
        resume_on(state, world)
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
        enabled=strategy.is_main,
    ) as runlog:
        saving = {**parts, "tokenizer": tokenizer, "config": resolved}
        pending = torch.tensor(state.pending_loss, dtype=torch.float64, device=strategy.device)
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
                strategy, model, optimizer, scheduler, batches, cfg
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
                metrics = evaluate(strategy, model, dev_data, cfg.per_device_eval_batch_size, pad_id, cfg.loss)
                if dev_scorer is not None:
                    strategy.progress("task metrics")
                    with strategy.autocast():
                        metrics.update(dev_scorer(strategy.unwrap(model)))
                entry = {"step": step, "epoch": epoch, **metrics, "elapsed": round(time.monotonic() - started, 3)}
                state.history.append(entry)
                runlog.write(entry)
                improved, evaluated = _eval_and_pick_best(cfg, state, metrics), True
            if step % cfg.save_steps == 0 or last or improved:
                state.pending_loss = float(pending)
                save_checkpoint(output_dir, state, **saving)
                if strategy.is_main:
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
