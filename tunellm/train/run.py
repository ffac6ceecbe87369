"""`tunellm train` as one function: check the inputs, load, tokenize, apply the method, fit, say where it all went.

Everything that can fail without the model (data files, output folder, resume target, reporters) is checked
before the model loads, so a typo costs a second, not a model load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset

from tunellm.config.schema import RunConfig
from tunellm.data.prepare import choose_template, tokenized_training_set
from tunellm.data.read import expand_paths
from tunellm.data.sources import held_out_records
from tunellm.doctor.gate import preflight
from tunellm.errors import ConfigError, DataError, ModelError
from tunellm.evaluate import check_best_metric, dev_scorer_for
from tunellm.evaluate.dev_scorer import wants_task_metrics
from tunellm.methods import METHODS
from tunellm.methods.base import hook
from tunellm.models.load import check_context, load_model, load_tokenizer_and_template
from tunellm.train.checkpoint import BEST_FILE, find_resume
from tunellm.train.log import CURVE_FILE, LOG_FILE, check_report_to
from tunellm.train.loop import FitResult, fit
from tunellm.train.strategy import make_strategy
from tunellm.train.watchdog import watch


def say(text: str) -> None:
    """Print on the main process only (every process of a multi-process run comes through here)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(text, flush=True)


def check_inputs(config: RunConfig) -> None:
    """Fail now on what would otherwise fail after the model has loaded."""
    if not config.data.train:
        raise DataError("no training data given", field="data.train", hint="pass --data FILE, or set data.train")
    for paths in (config.data.train, config.data.dev):
        if paths:
            expand_paths(paths)
    check_writable(Path(config.train.output_dir))
    check_report_to(config.train.report_to)
    check_best_metric(config)
    method = METHODS.get(config.method.name)
    find_resume(Path(config.train.output_dir), config.train.resume, quiet=True, method=method)  # fit warns of skips
    adapter = config.train.init_adapter
    if adapter and not Path(adapter).is_dir():
        raise ModelError("adapter folder not found", file=adapter, field="train.init_adapter")
    check_method = hook(method, "check")
    if check_method is not None:
        check_method(config)
    check_context(config.model, config.data.cutoff_len)
    check_sharding(config)


SHARDABLE_METHODS = ("lora", "full")  # their save goes through state_dict(), which a sharded run hands gathered


def check_sharding(config: RunConfig) -> None:
    """What a sharded run (fsdp, deepspeed ZeRO-3) cannot do yet, refused before anything loads."""
    train = config.train
    if train.distributed != "fsdp" and not (train.distributed == "deepspeed" and train.zero_stage == 3):
        return
    if config.method.name not in SHARDABLE_METHODS:
        raise ConfigError(
            f"method {config.method.name} is not supported with sharded weights (train.distributed="
            f"{train.distributed})",
            field="train.distributed",
            expected="method " + " or ".join(SHARDABLE_METHODS),
            hint="use distributed=ddp, or deepspeed with zero_stage=2",
        )
    if wants_task_metrics(config):
        raise ConfigError(
            "task metrics during training generate on a sharded model, where every process must run the same "
            "forwards; not supported",
            field="train.best_metric" if train.best_metric != "eval_loss" else "eval.task_metrics",
            hint="keep best_metric=eval_loss and score the checkpoints afterwards with tunellm eval",
        )


def check_writable(output_dir: Path) -> None:
    """The folder, or the nearest existing parent it would be created in, must be a writable folder."""
    existing = output_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{existing} is a file, not a folder", file=str(output_dir), field="train.output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{existing} is not writable", file=str(output_dir), field="train.output_dir", hint="choose another folder"
        )


def split_dev(dataset: Any, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Hold out the samples of a seeded `fraction` of the records (`held_out_records`); the rest train, in order.

    Drawn over records read, so the dev scorer (which reads the records) scores exactly the held-out records,
    whatever tokenization excluded. Splitting by index keeps the cached tokenized set whole.
    """
    sources = getattr(dataset, "sources", None)
    records = sources.records if sources is not None else np.arange(len(dataset))
    count = dataset.report.rows if sources is not None else len(dataset)
    is_dev = np.isin(records, held_out_records(count, fraction, seed))
    if is_dev.all():
        raise DataError(
            f"data.dev_split={fraction} leaves no training rows out of {count}",
            field="data.dev_split",
            hint="lower dev_split, add rows, or give a dev file",
        )
    return Subset(dataset, np.flatnonzero(~is_dev).tolist()), Subset(dataset, np.flatnonzero(is_dev).tolist())


def prepare_data(config: RunConfig, tokenizer: Any, template: Any) -> tuple[Any, Any | None]:
    """(train set, dev set or None), each data report printed."""
    train = tokenized_training_set(config.data.train, config.data, tokenizer, template)
    say(f"train data: {train.report.read_summary or 'tokenized set from the cache'}")
    say("  " + train.report.summary().replace("\n", "\n  "))
    if config.data.dev:
        dev = tokenized_training_set(config.data.dev, config.data, tokenizer, template)
        say(f"dev data: {dev.report.read_summary or 'tokenized set from the cache'}")
        say("  " + dev.report.summary().replace("\n", "\n  "))
        return train, dev
    if config.data.dev_split > 0:
        train, dev = split_dev(train, config.data.dev_split, config.train.seed)
        say(f"dev data: {len(dev):,} of {len(train) + len(dev):,} samples held out by record (data.dev_split)")
        return train, dev
    return train, None


def train_from_config(config: RunConfig, *, force: bool = False) -> FitResult:
    """Train as `config` says and return fit's result; `config` itself is left unchanged.

    Before the weights load, the doctor's fast checks refuse a run that will certainly fail (a sure
    out-of-memory, an end-of-turn generation never stops on) unless `force`."""
    import transformers

    config = config.model_copy(deep=True)
    check_inputs(config)
    # the data is read and tokenized before any weights load: a bad record costs seconds, not a model load
    strategy = make_strategy(config.train)  # joins the launcher's processes, if any
    tokenizer, family_template = load_tokenizer_and_template(config.model)
    template = choose_template(config.data.train, config.data, tokenizer, family_template)
    say(f"template: {template.name}")
    with strategy.main_first():  # the main process reads and tokenizes; the others then load its cache
        train, dev = prepare_data(config, tokenizer, template)
    preflight(config, tokenizer, template, train, force=force, say=say)
    # chat, predict and eval read the template from the checkpoint's config.yaml: store the name, not `auto`
    config.data.template = template.name
    transformers.set_seed(config.train.seed)  # before loading and applying: the adapter's init draws from it
    method = METHODS.get(config.method.name)
    load_options = hook(method, "load_options")
    model, tokenizer, family = load_model(
        config.model, load_options=load_options(config.method) if load_options else None
    )
    say(f"model: {config.model.name_or_path or 'the embedded default'} ({family.name} family)")
    model = method.apply(model, config.method, family)
    say(f"method: {config.method.name}, {trainable_summary(model)}")
    scorer = dev_scorer_for(config, tokenizer, template)
    try:
        with watch(strategy, Path(config.train.output_dir), config.train.ddp_timeout) as dog:
            try:
                result = fit(model, tokenizer, train, dev, config, method=method, dev_scorer=scorer, strategy=strategy)
            except RuntimeError as error:  # a collective failed: a peer died, or the group timed out
                if dog is not None:
                    dog.report(f"a collective failed: {str(error).strip().splitlines()[0][:300]}")
                raise
    finally:
        strategy.close()
    if strategy.is_main:
        report_outputs(Path(config.train.output_dir), result, config)
    return result


def trainable_summary(model: Any) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def report_outputs(output_dir: Path, result: FitResult, config: RunConfig) -> None:
    say(f"trained {result.global_step} steps; final train loss {_number(result.train_loss)}")
    best_file = output_dir / BEST_FILE
    if best_file.is_file():
        best = json.loads(best_file.read_text(encoding="utf-8"))
        say(f"best checkpoint: {output_dir / best['checkpoint']} ({best['metric']} {_number(best['value'])})")
    say(f"last checkpoint: {result.last_checkpoint}")
    say(f"log: {output_dir / LOG_FILE}")
    say(f"loss curve: {output_dir / CURVE_FILE}")
    if "tensorboard" in config.train.report_to:
        say(f"TensorBoard: tensorboard --logdir {output_dir / 'tensorboard'}")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
