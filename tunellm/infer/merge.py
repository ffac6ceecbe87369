"""`tunellm merge`: fold a checkpoint into its base model and write a plain transformers folder.

The folder holds config.json and the weights as safetensors, the tokenizer with a chat template that
renders as the checkpoint's template (`Template.chat_template()`), generation_config.json whose
eos_token_id lists every id `tunellm chat` stops on (the base's sampling settings kept, else greedy),
and parity.json. It is written into a temporary sibling folder; the parity check (parity.py) then loads
the written files from disk, the honest check of what was written, against the adapter model's outputs
recorded before merging (merging changes the model in place). Then parity.json is added and the folder
is renamed into place, whether parity holds or not: a failed merge stays there for inspection, and
`merge_checkpoint` raises ParityError after the rename. A crash before that leaves only the temporary
folder, which is removed when it can be; a SIGKILL leaves it, named with the process id, and the next merge into
the same output removes it once that process is gone.
"""

from __future__ import annotations

import copy
import gc
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunellm.atomic import fsync_path, usual_permissions, write_json_atomic
from tunellm.config.load import Override
from tunellm.config.schema import ModelConfig, RunConfig
from tunellm.data.record import Conversation
from tunellm.data.templates import get_template
from tunellm.data.tokenize import TokenizeOptions
from tunellm.errors import ConfigError
from tunellm.infer.load import CONFIG_FILE, InferenceModel, checkpoint_config, load_for_inference, resolve_checkpoint
from tunellm.infer.parity import (
    PARITY_FILE,
    Outputs,
    ParityError,
    ParityReport,
    compare,
    default_tolerance,
    parity_conversations,
    render_check,
    run_model,
)
from tunellm.infer.stops import Stops, find_stops, pad_id_of
from tunellm.infer.weight_parity import LayerParity, merge_layers_checked
from tunellm.methods import METHODS
from tunellm.models.convert.native import ORIGINAL
from tunellm.models.load import load_model
from tunellm.models.tokenizer import model_location


@dataclass
class MergeOptions:
    output: Path
    model: str | None = None  # base model; default: the one the checkpoint was trained on
    overrides: list[str | Override] = field(default_factory=list)  # key=value, as for chat
    dtype: str | None = None  # auto, float32, bfloat16, float16; default: the checkpoint's model.dtype
    device: str | None = None
    data: list[str] | None = None  # parity prompts from these records; default: built-in prompts
    prompts: int = 4
    max_new_tokens: int = 16
    tolerance: float | None = None  # default: by dtype, parity.TOLERANCE
    force: bool = False  # replace a non-empty output folder


@dataclass
class MergeResult:
    output: Path
    checkpoint: Path
    template: str
    report: ParityReport
    eos_token_ids: list[int]
    unlisted_stops: list[str]  # stop strings of several tokens, which generation_config.json cannot hold


def _silent(message: str) -> None:
    return None


def mergeable_method(config: RunConfig, checkpoint: Path) -> Any:
    """The checkpoint's tuning method, refused when it cannot be folded into the base weights."""
    name = config.method.name
    method = METHODS.get(name)
    if not getattr(method, "supports_merge", False):
        raise ConfigError(
            f"a {name} checkpoint cannot be merged into its base model (the method adds to the model rather "
            "than changing its weights)",
            file=str(checkpoint / CONFIG_FILE),
            field="method.name",
            hint=f"use the checkpoint as it is: tunellm chat --adapter {checkpoint}, or tunellm eval/predict "
            f"with --adapter {checkpoint}",
        )
    return method


def check_output(output: Path, keep: list[Path], force: bool) -> None:
    """Refuse an output that is a file, holds or is a folder the merge reads, or is not empty (without force)."""
    if output.exists() and not output.is_dir():
        raise ConfigError("the output is a file, not a folder", file=str(output), field="--output")
    target = output.resolve()
    for folder in keep:
        if target == folder.resolve() or target in folder.resolve().parents:
            raise ConfigError(
                f"the output folder would replace {folder}, which the merge reads",
                file=str(output),
                field="--output",
                hint="choose a new folder for the merged model",
            )
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ConfigError(
            "the output folder is not empty",
            file=str(output),
            field="--output",
            hint="choose a new folder, or add --force to replace it",
        )


def read_folders(checkpoint: Path, config: RunConfig, model: str | None) -> list[Path]:
    """The checkpoint and the base model's folder (when local): what the output must not replace."""
    base = Path(model or config.model.name_or_path or "")
    base = base.parent if base.suffix == ".gguf" else base
    return [checkpoint] + ([base] if str(base) not in ("", ".") and base.exists() else [])


def merge_checkpoint(adapter: str | Path, options: MergeOptions, say: Callable[[str], None] = _silent) -> MergeResult:
    """Merge the checkpoint `adapter` (a step-N folder or a run folder) into its base and write `options.output`.

    Raises ParityError (with `.result`) after writing the folder when the merged model disagrees with the
    adapter model beyond the tolerance; `say` receives progress lines.
    """
    output = Path(options.output)
    checkpoint = resolve_checkpoint(adapter)
    overrides = [*options.overrides, *([f"model.dtype={options.dtype}"] if options.dtype else [])]
    config = checkpoint_config(checkpoint, overrides)
    method = mergeable_method(config, checkpoint)
    check_output(output, read_folders(checkpoint, config, options.model), options.force)
    conversations = parity_conversations(config, options.data, options.prompts)  # bad data fails before loading
    say(f"loading {checkpoint}")
    loaded = load_for_inference(checkpoint, model=options.model, overrides=overrides, device=options.device)
    chat_template = loaded.template.chat_template()  # a template without a Jinja form stops before any work
    tokenize_options = TokenizeOptions.from_config(loaded.config.data)
    say(f"running the adapter model on {len(conversations)} prompts")
    reference = run_model(
        loaded.model, loaded.tokenizer, loaded.template, conversations, tokenize_options, options.max_new_tokens
    )
    dtype = next(loaded.model.parameters()).dtype
    tolerance = default_tolerance(dtype) if options.tolerance is None else options.tolerance
    output.parent.mkdir(parents=True, exist_ok=True)
    for folder in sweep_stale(output):
        say(f"removed {folder}, left by a merge that was killed")
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.merging-{os.getpid()}-", dir=output.parent))
    try:
        say(f"merging and writing {staging}")
        stops, layers = write_merged(method, loaded, chat_template, staging)
        say("loading the written folder and comparing")
        report = check_written(staging, loaded, conversations, reference, tokenize_options, options, tolerance, dtype)
        report.layers = layers
        write_json_atomic(staging / PARITY_FILE, report.to_json())
        move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = MergeResult(output, checkpoint, loaded.template.name, report, sorted(stops.eos_ids), list(stops.watched))
    if not report.passed:
        raise ParityError(
            "parity check failed: " + "; ".join(report.problems()),
            result=result,
            file=str(output / PARITY_FILE),
            hint=failure_hint(report, output),
        )
    return result


def write_merged(
    method: Any, loaded: InferenceModel, chat_template: str, folder: Path
) -> tuple[Stops, LayerParity | None]:
    """Merge (in place; LoRA layers one by one, each checked), then save weights, generation config and tokenizer;
    the model is released after."""
    layers = merge_layers_checked(loaded.model)
    with warnings.catch_warnings():  # peft notes that the checked layers are merged already
        warnings.filterwarnings("ignore", message=".*already merged.*")
        merged = method.merge(loaded.model)
    loaded.model = None  # keep no reference to the merged weights once written, so they can be freed
    stops = find_stops(merged, loaded.tokenizer, loaded.template)
    pad_id = pad_id_of(loaded.tokenizer, stops)
    merged.generation_config = merged_generation_config(merged.generation_config, stops, pad_id)
    merged.save_pretrained(str(folder))  # transformers 5 writes safetensors only
    del merged
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    tokenizer = loaded.tokenizer
    original = tokenizer.chat_template
    tokenizer.chat_template = chat_template
    try:
        tokenizer.save_pretrained(str(folder))
    finally:
        tokenizer.chat_template = original
    keep_original_files(loaded.config.model, folder)
    return stops, layers


def keep_original_files(model_config: ModelConfig, folder: Path) -> None:
    """A base converted from remote-code layout (ChatGLM2/3, Baichuan) passes its original config, code and
    tokenizer files on, so that `tunellm model convert MERGED --to-original` can write the original layout."""
    base, _ = model_location(model_config)
    kept = Path(base) / ORIGINAL
    if kept.is_dir():
        shutil.copytree(kept, folder / ORIGINAL)


def merged_generation_config(base: Any, stops: Stops, pad_id: int) -> Any:
    """The base's generation config with EOS = every id chat stops on; sampling stays as the base set it
    (greedy unless it asks for sampling)."""
    config = copy.deepcopy(base)
    ids = sorted(stops.eos_ids)
    config.eos_token_id = ids[0] if len(ids) == 1 else ids
    config.pad_token_id = pad_id
    # no longer derived from config.json; so marked, transformers could rebuild it from there and lose these ids
    config._from_model_config = False
    return config


def check_written(
    folder: Path,
    loaded: InferenceModel,
    conversations: list[Conversation],
    reference: Outputs,
    tokenize_options: TokenizeOptions,
    options: MergeOptions,
    tolerance: float,
    dtype: torch.dtype,
) -> ParityReport:
    """Load `folder` as a plain model (its own config, tokenizer and chat template) and compare it with `reference`."""
    model_config = loaded.config.model
    plain = ModelConfig(
        name_or_path=str(folder),
        dtype=str(dtype).removeprefix("torch."),
        attn_implementation=model_config.attn_implementation,
        trust_remote_code=model_config.trust_remote_code,
    )
    model, tokenizer, _ = load_model(plain, device=options.device)
    try:
        template = get_template(loaded.template.name, tokenizer)
        merged = run_model(
            model,
            tokenizer,
            template,
            conversations,
            tokenize_options,
            options.max_new_tokens,
            forced_replies=reference.reply_ids,
        )
        renders = [render_check(tokenizer, loaded.template, conversation) for conversation in conversations]
    finally:
        del model
        gc.collect()
    return compare(
        conversations,
        reference,
        merged,
        renders,
        tolerance=tolerance,
        dtype=dtype,
        max_new_tokens=options.max_new_tokens,
    )


def sweep_stale(output: Path) -> list[Path]:
    """Remove the staging folders of merges into `output` whose process is gone (killed). A `.replaced-` folder (a
    kill between the two renames of a --force merge) holds the user's earlier output and is left alone."""
    removed = []
    for folder in sorted(output.parent.glob(f".{output.name}.merging-*")):
        match = re.match(rf"\.{re.escape(output.name)}\.merging-(\d+)-", folder.name)
        if folder.is_dir() and not (match and process_alive(int(match.group(1)))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def move_into_place(staging: Path, output: Path) -> None:
    """Sync the staged files, then rename the folder to `output`, replacing what is there (checked before)."""
    for path in staging.rglob("*"):
        if path.is_file():
            fsync_path(path)
    usual_permissions(staging)  # safetensors writes 0600, mkdtemp makes 0700
    fsync_path(staging)
    if output.exists():
        old = output.with_name(f".{output.name}.replaced-{os.getpid()}")
        output.rename(old)
        staging.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(output)
    fsync_path(output.parent)


def failure_hint(report: ParityReport, output: Path) -> str:
    hint = f"the merged folder is kept at {output} for inspection; do not ship it"
    if report.dtype in ("bfloat16", "float16"):
        hint += f"; a {report.dtype} merge rounds the merged weights: try --dtype float32, or a larger --tolerance"
    return hint
