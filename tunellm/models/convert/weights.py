"""Read a checkpoint's state dict in its own file layout, and write one as sharded safetensors.

Reads `model.safetensors`, `model-0000N-of-0000M.safetensors` (with or without an index) and the
`pytorch_model*.bin` files the older ChatGLM and Baichuan releases ship (with `weights_only=True`: no pickle
code runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunellm.errors import ModelError

SHARD_BYTES = 4 * 1024**3


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors preferred, else PyTorch .bin files."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        found = sorted(p for p in folder.glob(pattern) if not p.name.startswith("adapter_"))
        if found:
            return found
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:20]) or "nothing"
    raise ModelError(
        "the checkpoint holds no weight files",
        file=str(folder),
        expected="*.safetensors or pytorch_model*.bin",
        hint=f"the folder holds: {present}",
    )


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            state.update(load_file(path))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def write_state_dict(state: dict[str, torch.Tensor], folder: Path, stem: str = "model") -> None:
    """Shards of at most SHARD_BYTES as `<stem>-0000N-of-0000M.safetensors` plus an index (one file if small)."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], folder / f"{stem}.safetensors", metadata={"format": "pt"})
        return
    index: dict[str, str] = {}
    for number, shard in enumerate(shards, 1):
        file_name = f"{stem}-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file_name, metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, file_name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    text = json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=2)
    (folder / f"{stem}.safetensors.index.json").write_text(text, encoding="utf-8")


def take(state: dict[str, torch.Tensor], name: str, folder: Path) -> torch.Tensor:
    """Pop one tensor, with an error that names it when the checkpoint lacks it."""
    try:
        return state.pop(name)
    except KeyError:
        raise ModelError(
            f"the checkpoint lacks the weight '{name}'",
            file=str(folder),
            hint="the config.json and the weight files do not belong together, or a download is incomplete",
        ) from None
