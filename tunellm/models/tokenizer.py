"""Load a tokenizer: the embedded default, a hub name, a local folder or a GGUF file."""

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
