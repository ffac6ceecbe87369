"""Load a model to generate with: a base model, optionally with a trained checkpoint, and its template.

`--adapter` may name a checkpoint folder (`step-N`, or any folder holding a peft adapter), or a whole
training output_dir, which means its best checkpoint (best.json), else its newest `step-N`. The
base model, template, system line and data options come from the checkpoint's `config.yaml`, so the
prompt is rendered as training rendered it; `--model`, `--template` and key=value override them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunellm.config.load import Override, load_config
from tunellm.config.schema import RunConfig
from tunellm.data.prepare import choose_template
from tunellm.data.templates import Template, get_template
from tunellm.errors import ConfigError, ModelError
from tunellm.methods import METHODS, freeze
from tunellm.models.families import Family
from tunellm.models.load import load_model
from tunellm.train.checkpoint import BEST_FILE, list_checkpoints

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
FULL_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json")
TRAINED_WEIGHTS = freeze.WEIGHTS_FILE  # a freeze checkpoint: the trained tensors only
CONFIG_FILE = "config.yaml"


@dataclass
class InferenceModel:
    model: Any
    tokenizer: Any
    template: Template
    config: RunConfig  # the checkpoint's config.yaml (or defaults) with the overrides applied
    checkpoint: Path | None  # the checkpoint folder used, None for a plain base model


def _held(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") or "nothing"


def is_checkpoint(folder: Path) -> bool:
    """A folder usable on its own: a peft adapter, trained tensors, or a full model (config.json and weights)."""
    full = (folder / "config.json").is_file() and any((folder / name).is_file() for name in FULL_MODEL_FILES)
    return (folder / ADAPTER_CONFIG).is_file() or (folder / TRAINED_WEIGHTS).is_file() or full


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder that `path` means: itself, a run's best checkpoint, or a run's newest one."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(
            "adapter folder not found",
            file=str(folder),
            hint="give a step-N checkpoint folder or a training output_dir",
        )
    if is_checkpoint(folder):
        return folder
    checkpoints = list_checkpoints(folder)
    best_file = folder / BEST_FILE
    if best_file.is_file():
        try:
            name = json.loads(best_file.read_text(encoding="utf-8"))["checkpoint"]
        except (ValueError, KeyError, TypeError):
            raise ModelError(
                f"{BEST_FILE} is not valid", file=str(best_file), expected='{"checkpoint": "step-N"}'
            ) from None
        best = folder / str(name)
        if not best.is_dir():
            names = ", ".join(p.name for p in checkpoints) or "none"
            raise ModelError(
                f"{BEST_FILE} names {name}, which is not in the run folder",
                file=str(best_file),
                hint=f"checkpoints there: {names}; pass one of them as --adapter",
            )
        return best
    if checkpoints:
        return checkpoints[-1]
    raise ModelError(
        "not a checkpoint nor a training run folder",
        file=str(folder),
        expected=f"a step-N folder ({ADAPTER_CONFIG}, adapter_model.safetensors, {CONFIG_FILE}) "
        "or a train.output_dir holding step-N folders",
        hint=f"the folder holds: {_held(folder)}",
    )


def checkpoint_config(checkpoint: Path | None, overrides: Sequence[str | Override] | None = None) -> RunConfig:
    """The checkpoint's resolved training config with `key=value` overrides; defaults without a checkpoint.

    A peft adapter without config.yaml (trained elsewhere) names its base model in adapter_config.json.
    """
    saved = checkpoint / CONFIG_FILE if checkpoint is not None else None
    if saved is not None and saved.is_file():
        return load_config(saved, overrides)
    config = load_config(None, overrides)
    if checkpoint is not None and config.model.name_or_path is None:
        base = _adapter_base(checkpoint)
        if base:
            config.model.name_or_path = base
    return config


def _adapter_base(checkpoint: Path) -> str | None:
    path = checkpoint / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path") or None
    except ValueError:
        raise ModelError("not valid JSON", file=str(path)) from None


def pick_template(config: RunConfig, tokenizer: Any, family: Family, model: Any) -> Template:
    """The template training used: `data.template`, or for `auto` the one `choose_template` picked for
    the training files; with no training files, the family's template."""
    family_template = family.template_for(tokenizer, getattr(model, "config", None))
    if config.data.template == "auto" and config.data.train:
        return choose_template(config.data.train, config.data, tokenizer, family_template)
    name = family_template if config.data.template == "auto" else config.data.template
    return get_template(name, tokenizer, family_default="alpaca")


def _checkpoint_tokenizer(checkpoint: Path, config: RunConfig, fallback: Any) -> Any:
    """The tokenizer saved with the checkpoint (what training used), else the base model's."""
    if not (checkpoint / "tokenizer_config.json").is_file():
        return fallback
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as error:
        log.warning("using the base model's tokenizer: the checkpoint's does not load (%s)", error)
        return fallback
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _attach(model: Any, checkpoint: Path, config: RunConfig, trained_on: str | None) -> Any:
    try:
        return METHODS.get(config.method.name).load(model, checkpoint, trainable=False)
    except RuntimeError as error:  # weights of another shape: another base model or rank
        raise ModelError(
            f"the adapter does not fit this base model: {str(error).strip().splitlines()[-1].strip()}",
            file=str(checkpoint),
            field="model.name_or_path",
            hint=f"use the base model it was trained on ({trained_on or 'the embedded default model'})",
        ) from None


def load_for_inference(
    adapter: str | Path | None = None,
    *,
    model: str | None = None,
    template: str | None = None,
    overrides: Sequence[str | Override] | None = None,
    device: str | None = None,
) -> InferenceModel:
    """Base model (+ checkpoint), tokenizer and template, in eval mode.

    `model` and `template` override the checkpoint's `model.name_or_path` and `data.template`.
    """
    checkpoint = resolve_checkpoint(adapter) if adapter is not None else None
    config = checkpoint_config(checkpoint, overrides)
    full_model = checkpoint is not None and not any(
        (checkpoint / name).is_file() for name in (ADAPTER_CONFIG, TRAINED_WEIGHTS)
    )
    trained_on = config.model.name_or_path
    if full_model and model is not None:
        raise ConfigError(
            "a full-model checkpoint is its own model", file=str(checkpoint), field="--model", hint="leave out --model"
        )
    if model is not None or full_model:
        config.model.name_or_path = model or str(checkpoint)
    if template is not None:
        config.data.template = template
    adapter_checkpoint = checkpoint if checkpoint is not None and not full_model else None
    # the checkpoint's tokenizer (what training used) replaces the base model's, which is then never loaded
    own = _checkpoint_tokenizer(adapter_checkpoint, config, None) if adapter_checkpoint is not None else None
    loaded, tokenizer, family = load_model(config.model, device=device, tokenizer=own)
    if adapter_checkpoint is not None:
        loaded = _attach(loaded, adapter_checkpoint, config, trained_on)
    loaded.eval()
    return InferenceModel(loaded, tokenizer, pick_template(config, tokenizer, family, loaded), config, checkpoint)


def shares_base(checkpoint: Path, config: RunConfig, base: InferenceModel) -> bool:
    """Whether the checkpoint is a LoRA adapter (DoRA too) trained on `base`'s model, so that it can be
    loaded by name beside other adapters on one copy of the base weights."""
    plain_lora = config.method.name == "lora" and (checkpoint / ADAPTER_CONFIG).is_file()
    return plain_lora and config.model.name_or_path == base.config.model.name_or_path


def add_named_adapter(base: InferenceModel, adapter: str | Path, name: str) -> InferenceModel | None:
    """Attach a LoRA checkpoint by `name` to `base`'s model; None when it cannot share it (see `shares_base`).

    `base.model` becomes (or already is) a peft model holding every adapter added; generation picks one
    with `set_adapter(name)`, or none inside `disable_adapter()`. The result keeps the checkpoint's own
    tokenizer, template and config, so its prompts are rendered as in training.
    """
    from peft import PeftModel

    from tunellm.methods.base import quiet_peft
    from tunellm.models.families import family_for

    checkpoint = resolve_checkpoint(adapter)
    config = checkpoint_config(checkpoint)
    if not shares_base(checkpoint, config, base):
        return None
    tokenizer = _checkpoint_tokenizer(checkpoint, config, base.tokenizer)
    family = family_for(getattr(base.model.config, "model_type", None))
    family.fix_tokens(tokenizer, None)
    try:
        with quiet_peft():
            if isinstance(base.model, PeftModel):
                base.model.load_adapter(str(checkpoint), adapter_name=name)
            else:
                base.model = PeftModel.from_pretrained(base.model, str(checkpoint), adapter_name=name)
    except RuntimeError as error:  # weights of another shape: another rank or base
        raise ModelError(
            f"the adapter does not fit the base model: {str(error).strip().splitlines()[-1].strip()}",
            file=str(checkpoint),
        ) from None
    base.model.eval()
    template = pick_template(config, tokenizer, family, base.model)
    return InferenceModel(base.model, tokenizer, template, config, checkpoint)


def load_for_prompting(adapter: str | Path | None = None, *, model: str | None = None) -> InferenceModel:
    """What rendering prompts and stopping replies need (tokenizer, template, config, the model's config and
    generation config) without loading any weights: for an engine that loads the weights itself (vLLM).

    The InferenceModel's `model` is a stand-in holding only `config` and `generation_config`.
    """
    from types import SimpleNamespace

    from transformers import AutoConfig, GenerationConfig

    from tunellm.models.families import family_for
    from tunellm.models.tokenizer import load_tokenizer, model_location

    checkpoint = resolve_checkpoint(adapter) if adapter is not None else None
    config = checkpoint_config(checkpoint)
    if model is not None:
        config.model.name_or_path = model
    location, gguf_file = model_location(config.model)
    options: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    if config.model.trust_remote_code:
        options["trust_remote_code"] = True
    model_config = AutoConfig.from_pretrained(location, **options)
    try:
        generation = GenerationConfig.from_pretrained(location, **options)
    except OSError:  # no generation_config.json
        generation = GenerationConfig.from_model_config(model_config)
    family = family_for(model_config.model_type)
    tokenizer = load_tokenizer(config.model)
    if checkpoint is not None:
        tokenizer = _checkpoint_tokenizer(checkpoint, config, tokenizer)
    family.fix_tokens(tokenizer, None)
    stand_in = SimpleNamespace(config=model_config, generation_config=generation)
    return InferenceModel(stand_in, tokenizer, pick_template(config, tokenizer, family, stand_in), config, checkpoint)
