"""Serialising the resume-only state: optimizer state as safetensors plus JSON, scheduler and scaler as JSON.

Apart from the folder policy (`checkpoint.py`: temp folder, rename, pruning, resume search), so a strategy that
writes its state another way (FSDP's sharded DCP files, DeepSpeed's own) reuses the policy unchanged.
Nothing is pickled: tensors go to `optimizer.safetensors` by name, everything else to `optimizer.json`, where a
tensor is referred to as {"__tensor__": name}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_DIR = "state"  # in a checkpoint folder: what only resuming needs
TENSOR_REF = "__tensor__"  # in optimizer.json: this value is the named tensor in optimizer.safetensors
OPTIMIZER_FILES = ("optimizer.safetensors", "optimizer.json")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def split_tensors(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` with every tensor (also inside dicts, as bitsandbytes keeps its quantization state) moved out."""
    if torch.is_tensor(value):
        tensors[name] = value.detach().cpu().contiguous()
        return {TENSOR_REF: name}
    if isinstance(value, dict):
        return {str(key): split_tensors(item, f"{name}.{key}", tensors) for key, item in value.items()}
    return value


def join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {TENSOR_REF}:
            return tensors[value[TENSOR_REF]]
        return {key: join_tensors(item, tensors) for key, item in value.items()}
    return value


def write_optimizer(folder: Path, state_dict: dict[str, Any]) -> None:
    """A torch optimizer's `state_dict()` as optimizer.safetensors + optimizer.json."""
    tensors: dict[str, torch.Tensor] = {}
    plain = {str(pid): split_tensors(entry, str(pid), tensors) for pid, entry in state_dict["state"].items()}
    save_file(tensors, str(folder / "optimizer.safetensors"))
    write_json(folder / "optimizer.json", {"state": plain, "param_groups": state_dict["param_groups"]})


def read_optimizer(folder: Path) -> dict[str, Any]:
    meta = read_json(folder / "optimizer.json")
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state = {int(pid): join_tensors(entry, tensors) for pid, entry in meta["state"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}
