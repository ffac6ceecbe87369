"""Optional fast generation with vLLM on a CUDA machine, the adapter served as a LoRA (never merged).

Prompts are tokenized by tunellm (the same ids as transformers generation gets) and handed to vLLM as
token ids; EOS ids and the template's stop strings stop a reply as they do in `infer.generate`.
vLLM is an optional extra; without it, or without CUDA, `pick_backend` says so and evaluation
generates with transformers, as it does for checkpoints vLLM cannot serve (P-Tuning v2, DoRA, freeze).
The CPU tests drive this module against a stand-in `vllm` package; real vLLM has not run here (no GPU).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunellm.data.record import Conversation
from tunellm.data.tokenize import TokenizeOptions
from tunellm.errors import ConfigError
from tunellm.infer.generate import Generation, SamplingOptions, encode_prompts
from tunellm.infer.load import ADAPTER_CONFIG, TRAINED_WEIGHTS, InferenceModel
from tunellm.infer.stops import Stops, find_stops
from tunellm.models.tokenizer import model_location

GPU_SHARE = 0.5  # the transformers copy of the model (for the loss) stays on the same GPU


def vllm_unavailable() -> str | None:
    """Why vLLM cannot be used here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install vllm, on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA device and none is visible"
    return None


def pick_backend(choice: str) -> tuple[str, str]:
    """(backend, a line saying which engine generates and why)."""
    if choice == "transformers":
        return "transformers", "generation: transformers"
    why = vllm_unavailable()
    if why is None:
        return "vllm", "generation: vLLM"
    if choice == "vllm":
        raise ConfigError(f"--backend vllm: {why}", field="eval.backend", hint="use --backend transformers")
    return "transformers", f"generation: transformers ({why})"


def vllm_cannot_serve(loaded: InferenceModel) -> str | None:
    """Why vLLM cannot generate as this checkpoint does, or None when it can (a base model, a whole-model
    checkpoint, or a LoRA adapter served without merging)."""
    checkpoint = loaded.checkpoint
    if checkpoint is None:
        return None
    if (checkpoint / TRAINED_WEIGHTS).is_file():
        return "vLLM loads whole models or LoRA adapters, not a freeze checkpoint's trained tensors"
    if not (checkpoint / ADAPTER_CONFIG).is_file():
        return None
    method = loaded.config.method
    if method.name not in ("lora", "qlora"):
        return f"vLLM serves LoRA adapters, not {method.name}"
    if getattr(method, "use_dora", False):
        return "vLLM does not serve DoRA adapters"
    return None


def make_engine(loaded: InferenceModel, *, lora_rank: int | None, gpu_share: float = GPU_SHARE, loras: int = 1) -> Any:
    """A vLLM engine on `loaded`'s base model (LoRA enabled when `lora_rank` is given) with its tokenizer."""
    from vllm import LLM

    location, gguf_file = model_location(loaded.config.model)
    options: dict[str, Any] = {"max_loras": loras} if lora_rank is not None and loras > 1 else {}
    return LLM(
        model=str(Path(location) / gguf_file) if gguf_file else location,
        tokenizer=str(loaded.checkpoint or location),
        enable_lora=lora_rank is not None,
        max_lora_rank=max(8, lora_rank or 0),
        gpu_memory_utilization=gpu_share,
        trust_remote_code=loaded.config.model.trust_remote_code,
        **options,
    )


def sampling_params(options: SamplingOptions, stops: Stops) -> Any:
    """vLLM's SamplingParams for tunellm's options, with the EOS ids and stop strings `generate` uses."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k or -1,
        repetition_penalty=options.repetition_penalty,
        max_tokens=options.max_new_tokens,
        seed=options.seed,
        stop=list(stops.texts),
        stop_token_ids=sorted(stops.eos_ids),
    )


class VllmGenerator:
    """One vLLM engine per base model; each call may name a LoRA checkpoint or none (the base model)."""

    def __init__(self, loaded: InferenceModel) -> None:
        self.loaded = loaded
        adapter = loaded.checkpoint is not None and (loaded.checkpoint / ADAPTER_CONFIG).is_file()
        self.engine = make_engine(loaded, lora_rank=getattr(loaded.config.method, "r", 8) if adapter else None)

    def __call__(
        self,
        conversations: Sequence[Conversation],
        options: SamplingOptions,
        tokenize_options: TokenizeOptions,
        *,
        use_adapter: bool = True,
    ) -> list[Generation]:
        from vllm.lora.request import LoRARequest

        loaded = self.loaded
        prompts = encode_prompts(conversations, loaded.tokenizer, loaded.template, tokenize_options)
        stops = find_stops(loaded.model, loaded.tokenizer, loaded.template)
        params = sampling_params(options, stops)
        checkpoint = loaded.checkpoint
        lora = None
        if use_adapter and checkpoint is not None and (checkpoint / ADAPTER_CONFIG).is_file():
            lora = LoRARequest("adapter", 1, str(checkpoint))  # PiSSA checkpoints hold plain LoRA already
        outputs = self.engine.generate([{"prompt_token_ids": p} for p in prompts], params, lora_request=lora)
        return [_generation(prompt, output.outputs[0]) for prompt, output in zip(prompts, outputs, strict=True)]


def _generation(prompt: Sequence[int], completion: Any) -> Generation:
    reason = "length" if completion.finish_reason == "length" else "stop"
    return Generation(completion.text, reason, len(prompt), len(completion.token_ids))
