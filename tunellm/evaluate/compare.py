"""`tunellm eval` as one function: load each model, score it, write what it found, compare models side by side.

`--compare` scores the base model by switching the adapter off in the loaded checkpoint (peft's
`disable_adapter`), so the base is read with the same tokenizer, template and data options, and costs no
second load; a freeze or full checkpoint loads its base beside it instead.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from tunellm.atomic import write_json_atomic
from tunellm.config.load import Override, load_config
from tunellm.errors import ConfigError
from tunellm.evaluate.report import bar_chart, differences, markdown_report
from tunellm.evaluate.run import (
    EvalResult,
    describe_model,
    evaluate_model,
    read_eval_data,
    rounded,
    write_result,
)
from tunellm.evaluate.vllm_backend import VllmGenerator, pick_backend, vllm_cannot_serve
from tunellm.infer.generate import SamplingOptions, model_device
from tunellm.infer.load import ADAPTER_CONFIG, CONFIG_FILE, InferenceModel, checkpoint_config, load_for_inference
from tunellm.models.load import load_model

REPORT_FILE = "metrics.md"
CHART_FILE = "metrics.png"
COMPARISON_FILE = "comparison.json"


@dataclass
class EvalRequest:
    data: list[str]
    adapters: list[str] = field(default_factory=list)  # none: the base model alone
    model: str | None = None
    template: str | None = None
    compare: bool = False  # also score the base model (the first adapter switched off)
    overrides: list[str | Override] = field(default_factory=list)
    output: Path | None = None
    batch_size: int = 8
    max_rows: int | None = None
    max_new_tokens: int | None = None
    backend: str | None = None  # None: eval.backend
    device: str | None = None
    show_progress: bool = False


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def check_request(request: EvalRequest) -> str:
    """Fail before loading anything; returns the generation backend."""
    if request.compare and not request.adapters:
        raise ConfigError(
            "--compare needs an --adapter: it scores the base model beside the tuned one",
            field="--compare",
            hint="tunellm eval DATA --adapter runs/latest --compare",
        )
    if request.output is not None and request.output.exists() and not request.output.is_dir():
        raise ConfigError("--output must be a folder", file=str(request.output), field="--output")
    config = load_config(None, request.overrides)
    backend, note = pick_backend(request.backend or config.eval.backend)
    _say(note)
    return backend


@contextlib.contextmanager
def base_of(loaded: InferenceModel) -> Iterator[tuple[InferenceModel, bool]]:
    """(the base model to score, whether it is the loaded one with its adapter switched off).

    A peft checkpoint switches its adapter off; a freeze or full checkpoint holds changed weights, so its base
    model loads beside it, read with the checkpoint's tokenizer, template and data options all the same.
    """
    switch = getattr(loaded.model, "disable_adapter", None)
    if loaded.checkpoint is not None and switch is not None and (loaded.checkpoint / ADAPTER_CONFIG).is_file():
        with switch():
            yield loaded, True
        return
    if loaded.checkpoint is None or not (loaded.checkpoint / CONFIG_FILE).is_file():
        raise ConfigError(
            "cannot tell which base model this whole-model checkpoint was trained from: it has no config.yaml",
            file=str(loaded.checkpoint),
            field="--compare",
            hint="score the base model as its own --adapter entry, without --compare",
        )
    model, _, _ = load_model(checkpoint_config(loaded.checkpoint).model, device=model_device(loaded.model))
    try:
        yield replace(loaded, model=model.eval(), checkpoint=None), False
    finally:
        del model
        _free_memory()


def label_for(loaded: InferenceModel, taken: Sequence[str]) -> str:
    if loaded.checkpoint is None:
        return Path(loaded.config.model.name_or_path or "default").name
    label = loaded.checkpoint.name
    if label in taken:
        label = f"{loaded.checkpoint.parent.name}/{label}"
    while label in taken:
        label += "'"
    return label


def evaluate_checkpoints(request: EvalRequest, say: Callable[[str], None] = _say) -> list[EvalResult]:
    """Score every requested model on the data (base first with --compare); write outputs when asked."""
    backend = check_request(request)
    results: list[EvalResult] = []
    for adapter in request.adapters or [None]:
        loaded = load_for_inference(
            adapter, model=request.model, template=request.template, overrides=request.overrides, device=request.device
        )
        conversations = read_eval_data(request.data, loaded.config, request.max_rows)
        label = label_for(loaded, ["base"] * request.compare + [r.label for r in results])
        say(f"{label}: {describe_model(loaded)}, template {loaded.template.name}, {len(conversations)} records")
        longest = {"max_new_tokens": request.max_new_tokens} if request.max_new_tokens else {}
        options = SamplingOptions.from_config(loaded.config.generate, **longest)
        vllm = None
        if backend == "vllm":
            why_not = vllm_cannot_serve(loaded)
            vllm = VllmGenerator(loaded) if why_not is None else None
            if why_not:
                say(f"{label}: generation with transformers: {why_not}")
        run = partial(evaluate_model, batch_size=request.batch_size, show_progress=request.show_progress)
        if request.compare and not results:
            with base_of(loaded) as (base_model, switched_off):
                generator = partial(vllm, use_adapter=False) if vllm and switched_off else None
                base = run(base_model, conversations, options, label="base", generator=generator)
                base.model = describe_base(base_model, label, switched_off)
            results.append(base)
        results.append(run(loaded, conversations, options, label=label, generator=vllm))
        del loaded, vllm, run
        _free_memory()
    if request.output is not None:
        written = write_outputs(results, request.output)
        say("wrote " + ", ".join(str(path) for path in written))
    return results


def describe_base(base: InferenceModel, label: str, switched_off: bool) -> str:
    name = base.config.model.name_or_path or "the embedded default model"
    return f"{name} ({label} switched off)" if switched_off else f"{name} (the base of {label})"


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_outputs(results: Sequence[EvalResult], folder: Path) -> list[Path]:
    """metrics.json and predictions.jsonl (per model in a sub-folder when several), metrics.md, metrics.png,
    and for several models comparison.json with each model's scores and its differences to the first.
    Returns every file written."""
    written: list[Path] = []
    if len(results) == 1:
        written += write_result(results[0], folder)
    else:
        for result in results:
            written += write_result(result, folder / result.label.replace("/", "_"))
        comparison: dict[str, Any] = {
            "models": {r.label: {"model": r.model, "overall": r.overall, "groups": r.groups} for r in results},
            "differences_to": results[0].label,
            "differences": differences(results),
        }
        write_json_atomic(folder / COMPARISON_FILE, rounded(comparison))
        written.append(folder / COMPARISON_FILE)
    (folder / REPORT_FILE).write_text(markdown_report(results), encoding="utf-8")
    bar_chart(results, folder / CHART_FILE)
    return [*written, folder / REPORT_FILE, folder / CHART_FILE]
