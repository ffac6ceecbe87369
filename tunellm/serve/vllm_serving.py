"""Serving through vLLM's engine on a CUDA machine: the base model once, each adapter as a LoRA request.

Prompts are rendered and tokenized by tunellm (each model's own template) and handed to vLLM as token
ids, with the EOS ids and stop strings `tunellm chat` uses, as `tunellm eval --backend vllm` does; the
scheduler batches requests for one model and vLLM generates the batch. A reply comes whole (a stream
gets it as one piece). Checkpoints vLLM cannot serve (P-Tuning v2, DoRA, freeze, adapters on another
base) make the server fall back to transformers, with a message saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunellm.errors import ConfigError
from tunellm.evaluate.vllm_backend import make_engine, sampling_params, vllm_cannot_serve, vllm_unavailable
from tunellm.infer.batch import Row, RowFeeder
from tunellm.infer.load import ADAPTER_CONFIG, InferenceModel, load_for_prompting
from tunellm.serve.backends import ServedModel, plan_models
from tunellm.serve.scheduler import Scheduler
from tunellm.serve.settings import ServeSettings

GPU_SHARE = 0.85  # the engine is the only model on the GPU (no transformers copy, unlike eval)


class VllmBackend:
    name = "vllm"

    def __init__(self, models: dict[str, ServedModel], settings: ServeSettings) -> None:
        from vllm.lora.request import LoRARequest

        self.models = models
        base = next(served for served in models.values() if served.adapter is None)
        adapters = [served for served in models.values() if served.adapter is not None]
        rank = max((getattr(served.loaded.config.method, "r", 8) for served in adapters), default=None)
        self.engine = make_engine(base.loaded, lora_rank=rank, gpu_share=GPU_SHARE, loras=max(1, len(adapters)))
        self.loras = {
            served.name: LoRARequest(served.name, number, str(served.loaded.checkpoint))
            for number, served in enumerate(adapters, start=1)
        }
        self.scheduler = Scheduler(
            self.run_batch,
            batch_size=settings.batch_size,
            queue_limit=settings.queue_limit,
            wait_s=settings.batch_wait_ms / 1000,
        )

    def run_batch(self, name: str, rows: Sequence[Row]) -> None:
        try:
            params = [sampling_params(row.options, row.stops) for row in rows]
            prompts = [{"prompt_token_ids": row.prompt} for row in rows]
            outputs = self.engine.generate(prompts, params, lora_request=self.loras.get(name))
        except Exception as error:
            for row in rows:
                RowFeeder.end(row, error)
            raise
        for row, output in zip(rows, outputs, strict=True):
            if not row.done:  # not cancelled meanwhile
                row.ids = list(output.outputs[0].token_ids)
                row.emit(list(row.ids))
                RowFeeder.end(row)

    def close(self) -> None:
        self.scheduler.close()


def why_not_vllm(base: InferenceModel, adapters: dict[str, InferenceModel]) -> str | None:
    for name, loaded in adapters.items():
        if loaded.checkpoint is not None and not (loaded.checkpoint / ADAPTER_CONFIG).is_file():
            return f"{name}: vLLM serves LoRA adapters on one base, not a whole-model or freeze checkpoint"
        why = vllm_cannot_serve(loaded)
        if why is not None:
            return f"{name}: {why}"
        if loaded.config.model.name_or_path != base.config.model.name_or_path:
            return f"{name}: trained on another base model than {base.config.model.name_or_path or 'the default'}"
    return None


def vllm_backend_or_reason(
    run_or_model: str | None, adapters: Sequence[tuple[str, str]], settings: ServeSettings, *, required: bool
) -> tuple[Any, str]:
    """(a vLLM backend, "") or (None, why not). Without vLLM or CUDA, `required` (--backend vllm) is an
    error; checkpoints vLLM cannot serve always fall back, as `tunellm eval` does."""
    why = vllm_unavailable()
    if why is not None:
        if required:
            raise ConfigError(f"--backend vllm: {why}", field="--backend", hint="use --backend transformers")
        return None, why
    base_location, base_name, named = plan_models(run_or_model, adapters)
    base = load_for_prompting(None, model=base_location)
    loaded = {name: load_for_prompting(path) for name, path in named}
    why = why_not_vllm(base, loaded)
    if why is not None:
        return None, why
    models = {base_name: ServedModel.of(base_name, base, None)}
    models.update({name: ServedModel.of(name, entry, name) for name, entry in loaded.items()})
    return VllmBackend(models, settings), ""
