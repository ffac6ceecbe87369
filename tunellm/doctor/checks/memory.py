"""Memory and time: the peak one process will reach and the step time on the target hardware, then the
settings that would fit when it does not."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tunellm.config.schema import RunConfig
from tunellm.doctor.base import CHECKS, Context, Result
from tunellm.doctor.estimate import (
    ALL_ROLES,
    GIB,
    TARGET_ROLES,
    MemoryEstimate,
    ModelShape,
    Plan,
    estimate_memory,
    step_flops,
)
from tunellm.doctor.hardware import Hardware

FITS = 0.9  # an estimate above this share of the memory is tight
SURE_OOM = 1.3  # above this multiple the run cannot fit even if the estimate is 25% high (its measured error)


def lora_roles(targets: str | list[str], family_targets: tuple[str, ...] | str) -> tuple[str, ...]:
    names = family_targets if targets == "auto" else targets
    if names == "all-linear" or isinstance(names, str):
        return ALL_ROLES
    roles = {role for name in names for role in TARGET_ROLES.get(name.split(".")[-1], ())}
    return tuple(sorted(roles)) or ALL_ROLES


def weight_dtype(config: RunConfig, hardware: Hardware) -> str:
    method = config.method
    if method.name == "qlora":
        return method.compute_dtype
    if method.name == "full":
        return "bfloat16" if method.pure_bf16 else "float32"
    if config.model.dtype != "auto":
        return config.model.dtype
    return "bfloat16" if hardware.kind == "cuda" and hardware.bf16 else "float32"


def plan_for(
    config: RunConfig,
    hardware: Hardware,
    seq_len: int,
    rows: int | None = None,
    family: Any = None,
    sharding: str = "none",
    world_size: int = 1,
) -> Plan:
    """The estimator's settings for a run config. The loss path and the batching come from `train.loss` and
    `train.batching` where the config has them (today: full fp32 logits and padded batches)."""
    method, train = config.method, config.train
    dtype = weight_dtype(config, hardware)
    options: dict[str, Any] = {"method": method.name, "weight_dtype": dtype}
    if method.name in ("lora", "qlora"):
        options |= {"lora_r": method.r, "lora_dropout": method.lora_dropout, "dora": method.use_dora}
        options["lora_targets"] = lora_roles(method.target_modules, family.lora_targets if family else "all-linear")
    if method.name == "qlora":
        options |= {"quant_bits": method.bits, "optim_bytes": 8.0 if method.optim == "adamw" else 2.0}
    if method.name == "ptuning_v2":
        hidden = method.prefix_hidden_size if method.prefix_projection else None
        options |= {"pre_seq_len": method.pre_seq_len, "prefix_hidden": hidden}
    if method.name == "freeze":
        options |= {"trainable_layers": method.trainable_layers, "train_dtype": dtype}
    if method.name == "full":
        options |= {"train_dtype": dtype, "optim_bytes": 4.0 if method.pure_bf16 else 8.0}
    loss = str(getattr(train, "loss", "full"))
    return Plan(
        **options,
        autocast=train.bf16 or train.fp16,
        batch=min(train.per_device_train_batch_size, rows or train.per_device_train_batch_size),
        seq_len=seq_len,
        cutoff_len=config.data.cutoff_len,
        tokens_per_batch=getattr(train, "tokens_per_batch", None),
        gradient_checkpointing=train.gradient_checkpointing,
        loss="chunked" if "chunk" in loss else "full",
        batching="packed" if str(getattr(train, "batching", "padded")) == "packed" else "padded",
        attention="eager" if config.model.attn_implementation == "eager" else "sdpa",
        device="cuda" if hardware.kind == "cuda" else "cpu",
        sharding=sharding,  # type: ignore[arg-type]
        world_size=world_size,
    )


def estimate_for_config(config: RunConfig, seq_len: int, raw: dict[str, Any] | None = None) -> MemoryEstimate:
    """The CPU peak of `config` at rows of `seq_len` tokens (bench/doctor_memory.py and its test use it)."""
    cpu = Hardware("cpu", "cpu", 0, 0)
    context = Context(config, cpu)
    shape = ModelShape.from_config(raw or context.model_config)
    return estimate_memory(shape, plan_for(config, cpu, seq_len, family=context.family))


def suggestions(shape: ModelShape, plan: Plan, memory: float, config: RunConfig) -> list[str]:
    """Changes that bring the estimate under FITS x memory, cheapest first; each alone, else with checkpointing."""
    limit = FITS * memory
    found = []
    checkpointed = dataclasses.replace(plan, gradient_checkpointing=True)

    alone = not plan.gradient_checkpointing and estimate_memory(shape, checkpointed).total <= limit
    trials = ((plan, ""),) if alone else ((plan, ""), (checkpointed, " train.gradient_checkpointing=true"))

    def first_fit(text: str, **change: Any) -> bool:
        for trial, extra in trials:
            candidate = dataclasses.replace(trial, **change)
            total = estimate_memory(shape, candidate).total
            if total <= limit:
                found.append(f"{text}{extra}".strip() + f": about {total / GIB:.1f} GiB")
                return True
        return False

    if alone:
        found.append(
            f"train.gradient_checkpointing=true: about {estimate_memory(shape, checkpointed).total / GIB:.1f} GiB"
        )
    accumulation = config.train.gradient_accumulation_steps
    if plan.batching == "packed" and plan.tokens_per_batch:  # the budget, not the row count, sizes the batch
        tokens = plan.tokens_per_batch // 2
        while tokens >= 64:
            steps = math.ceil(plan.tokens_per_batch / tokens) * accumulation
            if first_fit(
                f"train.tokens_per_batch={tokens} gradient_accumulation_steps={steps}", tokens_per_batch=tokens
            ):
                break
            tokens //= 2
    else:
        for batch in range(plan.batch - 1, 0, -1):
            steps = math.ceil(plan.batch / batch) * accumulation
            if first_fit(f"per_device_train_batch_size={batch} gradient_accumulation_steps={steps}", batch=batch):
                break
    if plan.loss == "full" and "loss" in type(config.train).model_fields:  # once the chunked loss path exists
        first_fit("train.loss=chunked", loss="chunked")
    if plan.method == "lora" and plan.device == "cuda":
        first_fit("method=qlora (4-bit base)", method="qlora", quant_bits=4, optim_bytes=2.0, weight_dtype="bfloat16")
    for n in (2, 4, 8):
        if first_fit(f"{n} such devices with ZeRO-3/FSDP sharding", sharding="zero3", world_size=n):
            break
    return found


def time_result(shape: ModelShape, plan: Plan, context: Context) -> Result:
    config, hardware = context.config, context.hardware
    accumulation = config.train.gradient_accumulation_steps
    flops = step_flops(shape, plan, accumulation)
    seconds = flops / hardware.rate(plan.autocast or plan.weight_dtype != "float32")
    tokens = plan.batch * plan.seq_len * accumulation * max(plan.world_size, 1)
    message = f"about {seconds:,.2f} s per optimizer step on {hardware.name} ({tokens / seconds:,.0f} tokens/s)"
    details = [f"{flops / 1e12:,.2f} TFLOP per step, rows padded to {plan.seq_len} tokens (an upper bound)"]
    steps = config.train.max_steps
    rows = context.rows
    if steps < 0 and rows:
        steps = math.ceil(config.train.num_train_epochs * rows / (plan.batch * accumulation * max(plan.world_size, 1)))
    if steps > 0:
        total = steps * seconds
        details.append(f"{steps:,} steps: about " + (f"{total:,.0f} s" if total < 120 else f"{total / 60:,.1f} min"))
    data = {"seconds_per_step": seconds, "tokens_per_second": tokens / seconds, "steps": steps}
    return Result("memory.time", "pass", message, details, data)


def memory_result(context: Context, shape: ModelShape, plan: Plan) -> Result:
    estimate = estimate_memory(shape, plan)
    memory = context.hardware.memory
    total = estimate.total
    parts = ", ".join(f"{name} {value / GIB:.2f}" for name, value in estimate.parts.items())
    rows = "the longest row" if context.longest_row else "cutoff_len (no data to measure)"
    details = [f"GiB: {parts}", f"batch {plan.batch} x {plan.seq_len} tokens ({rows}); {estimate.trainable:,} trained"]
    data = {**estimate.to_json(), "available_gib": round(memory / GIB, 2), "hardware": context.hardware.to_json()}
    where = f"{total / GIB:.2f} GiB of {memory / GIB:.1f} GiB on {context.hardware.name}"
    if total <= FITS * memory:
        return Result("memory.peak", "pass", f"estimated peak {where}", details, data)
    fixes = suggestions(shape, plan, memory, context.config)
    details += ["would fit: " + fix for fix in fixes] or ["nothing tried fits: use a smaller model or a larger device"]
    data["fits_with"] = fixes
    if total > SURE_OOM * memory:
        return Result("memory.peak", "fail", f"out of memory: estimated peak {where}", details, data, sure=True)
    return Result("memory.peak", "warn", f"tight: estimated peak {where}", details, data)


@CHECKS.register("memory")
def check_memory(context: Context) -> list[Result]:
    shape = ModelShape.from_config(context.model_config)
    rows = context.rows
    seq_len = context.longest_row or context.config.data.cutoff_len
    parallel = context.parallel
    plan = plan_for(
        context.config, context.hardware, seq_len, rows, context.family, parallel.sharding, parallel.world_size
    )
    return [memory_result(context, shape, plan), time_result(shape, plan, context)]
