"""Which checkpoints load natively after a conversion, and the cached converted copies.

A folder whose config.json names a family with a converter (ChatGLM2/3, GLM-4's first release, Baichuan-7B,
Baichuan2-7B) is converted once into `$TUNELLM_HOME/converted/<name>-<fingerprint>` (written to a temporary
folder, then renamed, like the default model) unless the user set `trust_remote_code`, which keeps the
checkpoint's own code. The copy holds the native weights and config, a fast tokenizer, and the original
non-weight files under `original/` so that a merge can be written back in the original layout.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import tunellm.models.chatglm6b  # noqa: F401  (registers the native ChatGLM-6B with the Auto classes)
from tunellm.atomic import build_folder_atomically
from tunellm.errors import ModelError
from tunellm.models.convert import baichuan, chatglm2, chatglm6b
from tunellm.models.convert.tokenizers import convert_tokenizer
from tunellm.models.convert.weights import read_state_dict, write_state_dict

CONVERTERS: tuple[ModuleType, ...] = (chatglm2, chatglm6b, baichuan)
ORIGINAL = "original"  # subfolder of a converted copy: the source's config, code and tokenizer files
SOURCE_FIELD = "tunellm_origin"


def converter_for(raw: dict[str, Any]) -> ModuleType | None:
    for module in CONVERTERS:
        if module.accepts(raw):
            return module
    return None


def local_folder(location: str) -> Path | None:
    """A local folder for `location`: itself, or the hub cache's snapshot (downloading when online)."""
    path = Path(location).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or location.startswith((".", "~")) or location.count("/") != 1:
        return None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache

        cached = try_to_load_from_cache(location, "config.json")
        config_file = cached if isinstance(cached, str) else hf_hub_download(location, "config.json")
        raw = json.loads(Path(config_file).read_text(encoding="utf-8"))
        if converter_for(raw) is None:
            return None
        return Path(snapshot_download(location))
    except Exception:  # offline or unknown: the normal loading path reports it
        return None


def read_raw(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def native_location(location: str, trust_remote_code: bool) -> str:
    """`location`, or the folder of its native conversion when it needs one and remote code is not trusted."""
    if trust_remote_code:
        return location
    folder = local_folder(location)
    raw = read_raw(folder) if folder is not None else None
    if raw is None or converter_for(raw) is None:
        return location
    return str(converted_dir(folder))


def fingerprint(folder: Path) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def converted_dir(folder: Path) -> Path:
    from tunellm.models.default import cache_root

    target = cache_root() / "converted" / f"{folder.resolve().name}-{fingerprint(folder)}"
    if (target / "config.json").is_file():
        return target
    return build_folder_atomically(target, lambda staging: convert_folder(folder, staging))


def convert_folder(source: Path, target: Path) -> None:
    """Write the native form of the checkpoint in `source` into the (existing, empty) folder `target`."""
    from transformers import AutoConfig

    raw = read_raw(source)
    module = converter_for(raw) if raw is not None else None
    if module is None:
        raise ModelError(
            "this checkpoint has no native conversion",
            file=str(source / "config.json"),
            expected="model_type chatglm (ChatGLM2/3, GLM-4) or baichuan (7B)",
            hint="other models load as they are; no conversion is needed",
        )
    fields = module.convert_config(raw, source)
    native = module.convert_weights(read_state_dict(source), fields, source)
    config = AutoConfig.for_model(**fields)
    config.save_pretrained(target)
    write_state_dict(native, target)
    convert_tokenizer(source, target, raw)
    keep = target / ORIGINAL
    keep.mkdir()
    for path in source.iterdir():
        is_weights = path.suffix in {".safetensors", ".bin"} or path.name.endswith(".index.json")
        if path.is_file() and not is_weights:
            shutil.copy2(path, keep / path.name)


def write_original(native_folder: Path, target: Path, dtype: Any = None) -> None:
    """Write a native checkpoint folder (a conversion, or a merge of one) back in the original layout:
    original config, code and tokenizer files, weights under the original names."""
    from transformers import AutoConfig

    keep = native_folder / ORIGINAL
    config = AutoConfig.from_pretrained(native_folder)
    origin = getattr(config, SOURCE_FIELD, None)
    module = next((m for m in CONVERTERS if origin == m.ORIGIN), None)
    if module is None or not keep.is_dir():
        raise ModelError(
            "this folder is not a native conversion of a ChatGLM or Baichuan checkpoint",
            file=str(native_folder),
            expected=f"config.json with {SOURCE_FIELD} and an '{ORIGINAL}/' folder",
        )
    fields = config.to_dict()
    state = module.original_weights(read_state_dict(native_folder), fields)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    target.mkdir(parents=True, exist_ok=True)
    for path in keep.iterdir():
        shutil.copy2(path, target / path.name)
    write_state_dict(state, target)
