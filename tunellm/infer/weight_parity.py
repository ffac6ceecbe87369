"""The exact half of merge parity: each LoRA layer's merged weight against base + scale·B·A computed in float32.

The logit comparison (parity.py) must allow for half-precision noise (bf16 logits differ by ~1.5 from fp32
alone), so a merge off by a factor could pass it. Weights can be checked exactly: before the layer merges,
its base weight and the adapter's delta are taken in float32; after, every merged element must lie within the
rounding of the model's dtype (one unit in the last place of the result and of the delta, as a merge in that
dtype rounds twice). A delta off by 2x misses that bound wherever the delta itself is larger than the
rounding, in every dtype. Layers merge one at a time (peft's own per-layer merge), so the float32 copies
cost one layer's memory. LoRA variants whose merge is not base + delta (DoRA) are counted as not covered.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

LISTED = 5  # failing layers named in the report


@dataclass
class LayerParity:
    dtype: str
    checked: int = 0  # layers compared
    resolved: int = 0  # of them, layers whose delta shows above the dtype's rounding somewhere (so a wrong one fails)
    not_covered: int = 0  # LoRA layers of variants this check does not model (DoRA)
    failed: list[str] = field(default_factory=list)  # "name (max error x, bound y)" of the first LISTED failing layers
    failures: int = 0

    @property
    def passed(self) -> bool:
        return self.failures == 0

    def problems(self) -> list[str]:
        if self.passed:
            return []
        return [
            f"{self.failures} of {self.checked} merged LoRA layers differ from base + scale·B·A: "
            + "; ".join(self.failed)
        ]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def lora_linear_layers(model: Any) -> list[tuple[str, Any]]:
    """(name, layer) of every peft LoRA Linear layer in `model`; [] when it holds none."""
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return []
    return [(name, module) for name, module in model.named_modules() if isinstance(module, Linear)]


def expected_delta(layer: Any, adapter: str) -> torch.Tensor:
    """scale·B·A in float32, computed here rather than by peft (whose merge is what is checked)."""
    a = layer.lora_A[adapter].weight.detach().float()
    b = layer.lora_B[adapter].weight.detach().float()
    delta = (b @ a) * float(layer.scaling[adapter])
    return delta.T if getattr(layer, "fan_in_fan_out", False) else delta


def merge_layers_checked(model: Any) -> LayerParity | None:
    """Merge every LoRA Linear layer of `model` in place, checking each; None when the model has none.

    The caller's method.merge then finds these layers merged and only unloads the wrapper.
    """
    layers = lora_linear_layers(model)
    if not layers:
        return None
    dtype = layers[0][1].get_base_layer().weight.dtype
    report = LayerParity(dtype=str(dtype).removeprefix("torch."))
    for name, layer in layers:
        for adapter in [a for a in layer.active_adapters if a in layer.lora_A and a not in layer.merged_adapters]:
            if adapter in getattr(layer, "lora_variant", {}):
                report.not_covered += 1
                continue
            check_one(name, layer, adapter, report)
    return report


def check_one(name: str, layer: Any, adapter: str, report: LayerParity) -> None:
    weight = layer.get_base_layer().weight
    eps = torch.finfo(weight.dtype).eps
    with torch.no_grad():
        delta = expected_delta(layer, adapter).to(weight.device)
        expected = weight.detach().float() + delta
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer.merge(adapter_names=[adapter])
        bound = eps * (expected.abs() + delta.abs()) + torch.finfo(weight.dtype).tiny
        error = (weight.detach().float() - expected).abs()
        excess = error - bound
    report.checked += 1
    report.resolved += bool((delta.abs() > bound).any())
    if not bool((excess <= 0).all()):  # written so that NaN fails
        report.failures += 1
        if len(report.failed) < LISTED:
            report.failed.append(f"{name} (max error {error.max().item():.3g}, bound {bound.max().item():.3g})")
