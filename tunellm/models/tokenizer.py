"""Load a tokenizer: the embedded default, a hub name, a local folder or a GGUF file; and what the data commands
need besides (the model's config and family), all without torch or the model classes: data commands start fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunellm.config.schema import ModelConfig
from tunellm.errors import ModelError


def model_location(model: ModelConfig) -> tuple[str, str | None]:
    """(folder or hub name, gguf file name or None) for a model config; None means the default model.

    A checkpoint written for remote code that has a native form gives the folder of its cached conversion."""
    if model.name_or_path is None:
        from tunellm.models.default import default_model_dir

        return str(default_model_dir()), None
    path = Path(model.name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError("GGUF file not found", file=str(path))
        return str(path.parent), path.name
    if model.gguf_file is None:  # ChatGLM2/3 and Baichuan-7B folders load from their native conversion
        from tunellm.models.convert.native import native_location

        return native_location(model.name_or_path, model.trust_remote_code), None
    return model.name_or_path, model.gguf_file


def load_tokenizer(model: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    location, gguf_file = model_location(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location, gguf_file=gguf_file, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the tokenizer: {error}", file=location) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_config_dict(location: str) -> dict[str, Any]:
    """config.json as a dict, without running any code it names."""
    from transformers import PretrainedConfig

    folder = Path(location)
    looks_local = folder.is_absolute() or location.startswith((".", "~"))
    if looks_local and not folder.exists():
        raise ModelError("model folder not found", file=location, field="model.name_or_path")
    if folder.is_dir() and not (folder / "config.json").is_file():
        present = sorted(p.name for p in folder.iterdir())
        raise ModelError(
            "config.json is missing from the model folder",
            file=location,
            expected="a transformers checkpoint folder (config.json, *.safetensors, tokenizer files)",
            hint="the folder holds: " + (", ".join(present[:20]) or "nothing"),
        )
    try:
        raw, _ = PretrainedConfig.get_config_dict(location)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"cannot read the model config: {error}",
            file=location,
            field="model.name_or_path",
            hint="give a local folder holding config.json, a hub name (online), or a .gguf file",
        ) from None
    return raw


def check_remote_code(raw: dict[str, Any], model_config: ModelConfig, location: str) -> bool:
    """Whether loading runs checkpoint-shipped code; raises if it would and the user has not allowed it."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = raw.get("model_type")
    if model_type in CONFIG_MAPPING:
        return False
    if "auto_map" not in raw:
        raise ModelError(
            f"model_type '{model_type}' is unknown to the installed transformers and the checkpoint ships no code",
            file=location,
            hint="upgrade transformers, or check that this is a causal language model checkpoint",
        )
    if not model_config.trust_remote_code:
        raise ModelError(
            f"this checkpoint (model_type '{model_type}') runs model code shipped with it",
            file=location,
            field="model.trust_remote_code",
            expected="true to allow it",
            hint="read the .py files of the checkpoint, then set model.trust_remote_code=true",
        )
    return True


# tokenizer classes AutoTokenizer loads as the plain fast tokenizer (transformers 5 names it TokenizersBackend)
PLAIN_FAST = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer_and_template(model_config: ModelConfig) -> tuple[Any, str]:
    """The tokenizer and its family's template name, without loading weights (for data commands)."""
    location, gguf_file = model_location(model_config)
    light = plain_tokenizer_and_template(location, gguf_file, model_config)
    if light is not None:
        return light
    from transformers import AutoConfig

    from tunellm.models.families import family_for

    options: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file is None and check_remote_code(read_config_dict(location), model_config, location):
        options["trust_remote_code"] = True
    config = AutoConfig.from_pretrained(location, **options)
    tokenizer = load_tokenizer(model_config)
    family = family_for(config.model_type)
    family.fix_tokens(tokenizer, None)
    return tokenizer, family.template_for(tokenizer, config)


def plain_tokenizer_and_template(location: str, gguf_file: str | None, model_config: ModelConfig) -> Any:
    """(tokenizer, template name) without `AutoConfig`/`AutoTokenizer`, whose imports pull in torch (seconds of a
    data command's start-up), for the common case where they would give the same: a local folder of a family
    tunellm knows, no remote code, and a tokenizer saved as the plain fast class. None otherwise."""
    import json
    from types import SimpleNamespace

    from tunellm.models.families import GENERIC, family_for

    folder = Path(location)
    if gguf_file is not None or not (folder / "tokenizer.json").is_file() or model_config.trust_remote_code:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        saved = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    family = family_for(config.get("model_type"))
    plain = saved.get("tokenizer_class") in PLAIN_FAST and "auto_map" not in saved and "auto_map" not in config
    if family is GENERIC or not plain:
        return None
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(location)
    except (OSError, ValueError):
        return None  # the usual path reports the problem
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    family.fix_tokens(tokenizer, None)
    return tokenizer, family.template_for(tokenizer, SimpleNamespace(**config))
