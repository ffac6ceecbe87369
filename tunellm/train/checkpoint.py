"""Checkpoints: written atomically, found again for resume, pruned, and the best one named in best.json.

A checkpoint `output_dir/step-N/` is usable on its own: the trainable weights (a peft adapter or a full model,
safetensors), the tokenizer and the resolved `config.yaml`. What only resuming needs lies in `step-N/state/`:
the optimizer and scheduler state as the distributed strategy writes it (`strategy/`; one process's is pickle-free,
`optim_state.py`), RNG per process and the TrainState. This file is the folder policy: it is written in
`.tmp-step-N/` by every process, fsynced, then renamed by the main one, so a folder named `step-N` is always complete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from tunellm.atomic import fsync_path, usual_permissions, write_json_atomic
from tunellm.errors import ConfigError, ModelError, TrainingError
from tunellm.methods.base import hook, restore_peft, restore_tensors
from tunellm.train.optim_state import STATE_DIR, read_json, write_json
from tunellm.train.state import TrainState, capture_rng, restore_rng

log = logging.getLogger(__name__)

STEP = re.compile(r"step-(\d+)")
TMP_PREFIX = ".tmp-step-"
STATE_FILES = ("trainer_state.json", "scheduler.json", "rng_0.json")
# the optimizer state as each strategy writes it: whole (none, ddp), DCP shards (fsdp), DeepSpeed's own folder
OPTIMIZER_LAYOUTS = {
    "none": ("optimizer.safetensors", "optimizer.json"),
    "fsdp": ("sharded/.metadata",),
    "deepspeed": ("latest",),
}
# the weights a model's own save_pretrained writes (a peft adapter, one file or a sharded index): checkpoints saved
# without a method; a method names its own in `weight_files`
PRETRAINED_WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
BEST_FILE = "best.json"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (`step-N` folders; temp folders are never complete), oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and STEP.fullmatch(p.name)]
    return sorted(found, key=_step)


def remove_partial(output_dir: Path) -> list[Path]:
    """Delete the temp folders a killed run left behind."""
    partial = sorted(output_dir.glob(TMP_PREFIX + "*")) if output_dir.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def find_resume(output_dir: Path, resume: str, *, quiet: bool = False, method: Any | None = None) -> Path | None:
    """The checkpoint to continue from: `auto` (the newest usable one in output_dir, if any), `never`, or a folder.

    `quiet` leaves out the warnings about damaged checkpoints passed over (for a check that runs before `fit`);
    `method` (the run's METHODS plug-in) names the weight files a usable checkpoint holds."""
    existing = list_checkpoints(output_dir)
    if resume == "never":
        if existing:
            raise ConfigError(
                f"output_dir already holds checkpoints ({', '.join(p.name for p in existing[-3:])})",
                file=str(output_dir),
                field="train.resume",
                hint="set train.resume=auto to continue that run, or choose another train.output_dir",
            )
        return None
    if resume == "auto":
        for folder in reversed(existing):
            problem = checkpoint_problem(folder, method)
            if problem is None:
                return folder
            if not quiet:
                log.warning("skipping checkpoint %s: %s; resuming from an earlier one", folder, problem)
        return None
    path = Path(resume)
    if path.is_dir() and not (path / STATE_DIR).is_dir() and list_checkpoints(path):
        return list_checkpoints(path)[-1]
    if not path.is_dir():
        names = ", ".join(p.name for p in existing) or "none"
        raise ModelError(
            "checkpoint folder not found",
            file=resume,
            field="train.resume",
            hint=f"checkpoints in {output_dir}: {names}; or use resume=auto",
        )
    later = [p for p in existing if p.resolve().parent == path.resolve().parent and _step(p) > _step(path)]
    if later:  # they would be taken for this run's, by pruning and by a later resume=auto
        raise ConfigError(
            f"output_dir holds checkpoints later than {path.name}: {', '.join(p.name for p in later)}",
            file=str(output_dir),
            field="train.resume",
            hint="delete them to branch off from there, or write to another train.output_dir",
        )
    return path


def _step(folder: Path) -> int:
    match = STEP.fullmatch(folder.name)
    return int(match.group(1)) if match else -1


def weight_files(method: Any | None) -> tuple[str, ...]:
    """The files holding a checkpoint's trained weights: the method's own, else save_pretrained's."""
    return PRETRAINED_WEIGHT_FILES if method is None else tuple(method.weight_files)


def check_complete(folder: Path, method: Any | None = None) -> None:
    """Raise an error naming the missing files, what the folder holds and how to go on."""
    missing = [f"{STATE_DIR}/{name}" for name in STATE_FILES if not (folder / STATE_DIR / name).is_file()]
    if optimizer_layout(folder) is None:  # listed where optimizer.safetensors always was: after trainer_state
        at = int(f"{STATE_DIR}/{STATE_FILES[0]}" in missing)
        missing.insert(at, f"{STATE_DIR}/{OPTIMIZER_LAYOUTS['none'][0]} (or the sharded state)")
    weights = weight_files(method)
    if not any((folder / name).is_file() for name in weights):
        missing.append(" or ".join(weights[:2]))
    if missing:
        held = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        raise ModelError(
            f"checkpoint is incomplete, missing: {', '.join(missing)}",
            file=str(folder),
            expected="a step-N folder written by `tunellm train`",
            hint=f"it holds: {', '.join(held) or 'nothing'}. Resume from another step-N folder or set resume=never",
        )


def optimizer_layout(folder: Path) -> str | None:
    """Which strategy's optimizer files `folder/state` holds: none (also ddp), fsdp or deepspeed; None if none."""
    for name, files in OPTIMIZER_LAYOUTS.items():
        if all((folder / STATE_DIR / file).is_file() for file in files):
            return name
    return None


def checkpoint_problem(folder: Path, method: Any | None = None) -> str | None:
    """What makes `folder` unusable for resume (a missing file, a safetensors file cut short, a state file that
    does not parse), or None. Reads headers and JSON only, not the tensors."""
    try:
        check_complete(folder, method)
    except ModelError as error:
        return error.message
    from safetensors import safe_open

    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as error:  # SafetensorError or OSError: either way the file cannot be loaded
            return f"{path.relative_to(folder)} is damaged ({error})"
    for path in sorted((folder / STATE_DIR).glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            return f"{path.relative_to(folder)} does not parse ({error})"
    return None


def save_trainable(model: Any, folder: Path, method: Any | None = None) -> None:
    """The trained part as the tuning method writes it; without a method, the model's own save_pretrained."""
    if method is not None:
        method.save(model, folder)
    else:
        model.save_pretrained(str(folder))


def load_trainable(model: Any, folder: Path, method: Any | None = None) -> None:
    """Load weights written by `save_trainable` into `model` in place (parameters keep their identity)."""
    from peft import PeftModel

    restore = hook(method, "restore") if method is not None else None
    if restore is None:
        restore = restore_peft if isinstance(model, PeftModel) else restore_tensors
    restore(model, folder)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(folder)


def save_checkpoint(
    output_dir: Path,
    state: TrainState,
    *,
    strategy: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    tokenizer: Any,
    config: dict[str, Any],
    method: Any | None = None,
) -> Path:
    """Write `output_dir/step-N` atomically; every process must call it (each saves its RNG state, and a sharded
    strategy its shards).

    Saving leaves the RNG as it found it, so a run that saved and a run resumed from the save draw the same numbers.
    """
    final = output_dir / f"step-{state.global_step}"
    tmp = output_dir / f"{TMP_PREFIX}{state.global_step}"
    if strategy.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / STATE_DIR).mkdir(parents=True)
    strategy.barrier()
    rng = capture_rng()
    try:
        write_json(tmp / STATE_DIR / f"rng_{strategy.rank}.json", rng)
        strategy.export(model, tmp, partial(save_trainable, method=method))
        strategy.save_state(tmp, model, optimizer, scheduler)
        if strategy.is_main:
            if hasattr(tokenizer, "save_pretrained"):
                tokenizer.save_pretrained(str(tmp))
            config_text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
            (tmp / "config.yaml").write_text(config_text, encoding="utf-8")
            state.save(tmp / STATE_DIR / "trainer_state.json")
        strategy.barrier()
        if strategy.is_main:
            usual_permissions(tmp)  # safetensors writes its files 0600
            _fsync_tree(tmp)
    except OSError as error:
        raise write_failed(output_dir, tmp, final, error) from error
    if strategy.is_main:
        if final.exists():  # only when a finished run is saved again at the same step
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_path(output_dir)
    strategy.barrier()
    restore_rng(rng)
    return final


def write_failed(output_dir: Path, tmp: Path, final: Path, error: OSError) -> TrainingError:
    """The error for a checkpoint that could not be written (a full disk): the partial folder is removed to give
    the space back, and the message names the cause and the checkpoint a rerun resumes from."""
    shutil.rmtree(tmp, ignore_errors=True)
    previous = [p for p in list_checkpoints(output_dir) if p != final]
    cause = error.strerror or str(error)
    resume = f"the previous checkpoint {previous[-1].name} is intact" if previous else "no earlier checkpoint exists"
    return TrainingError(
        f"could not write checkpoint {final.name}: {cause}; training stopped",
        file=str(error.filename or final),
        hint=f"{resume}; free space (or choose another train.output_dir) and run the same command again to resume",
    )


def load_checkpoint(
    folder: Path, *, strategy: Any, model: Any, optimizer: Any, scheduler: Any, method: Any | None = None
) -> tuple[TrainState, dict[str, Any]]:
    """Restore weights, optimizer, scheduler and scaler; return the TrainState and this process's RNG state.

    The caller restores the RNG (`state.restore_rng`) last, just before training goes on. Any number of processes
    may resume a checkpoint written by any other number; a process without its own RNG state takes process 0's.
    """
    check_complete(folder, method)
    layout = optimizer_layout(folder)
    wanted = "none" if strategy.name == "ddp" else strategy.name
    if layout != wanted:
        raise ConfigError(
            f"the checkpoint holds the optimizer state of train.distributed={layout}, not {strategy.name}",
            file=str(folder),
            field="train.distributed",
            hint=f"resume with train.distributed={layout}, or start a new train.output_dir from its weights "
            f"(train.init_adapter={folder})",
        )
    state_dir = folder / STATE_DIR
    strategy.load_state(folder, model, optimizer, scheduler, partial(load_trainable, method=method))
    rng_file = state_dir / f"rng_{strategy.rank}.json"
    if not rng_file.is_file():
        log.warning("%s has no RNG state for process %d; using process 0's", folder, strategy.rank)
        rng_file = state_dir / "rng_0.json"
    return TrainState.load(state_dir / "trainer_state.json"), read_json(rng_file)


def config_changes(folder: Path, config: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between the checkpoint's config.yaml and `config`."""
    path = folder / "config.yaml"
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix: tree}
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    old, new = flat(saved or {}), flat(config)
    return sorted(k.rstrip(".") for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def write_best(output_dir: Path, state: TrainState, metric: str, greater_is_better: bool) -> None:
    if state.best_step is None:
        return
    best = {
        "step": state.best_step,
        "checkpoint": f"step-{state.best_step}",
        "metric": metric,
        "value": state.best_value,
        "greater_is_better": greater_is_better,
    }
    write_json_atomic(output_dir / BEST_FILE, best)


def prune(output_dir: Path, limit: int | None, best_step: int | None) -> list[Path]:
    """Delete all but the newest `limit` checkpoints, never the best one."""
    existing = list_checkpoints(output_dir)
    if limit is None or len(existing) <= limit:
        return []
    keep = set(existing[-limit:])
    removed = [p for p in existing if p not in keep and p.name != f"step-{best_step}"]
    for path in removed:
        shutil.rmtree(path)
    return removed
