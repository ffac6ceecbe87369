"""What the server generates with: the served models (a base and adapters by name) and a backend that
batches requests for them.

One copy of the base weights serves every LoRA adapter trained on it: the adapters are loaded by name
into one peft model and the scheduler switches adapter between batches (a batch holds one model's
requests). Checkpoints that cannot share the base that way (P-Tuning v2, freeze, full, QLoRA, another
base model) are loaded on their own, with their own copy of the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunellm.data.record import Conversation
from tunellm.data.tokenize import TokenizeOptions
from tunellm.errors import ConfigError
from tunellm.infer.batch import Row, generate_rows
from tunellm.infer.generate import encode_prompts
from tunellm.infer.load import (
    InferenceModel,
    add_named_adapter,
    checkpoint_config,
    is_checkpoint,
    load_for_inference,
    resolve_checkpoint,
)
from tunellm.infer.stops import Stops, find_stops
from tunellm.serve.scheduler import Scheduler
from tunellm.serve.settings import ServeSettings

log = logging.getLogger(__name__)
DEFAULT_NAME = "SmolLM2-135M-Instruct"  # the embedded default model
UNLIMITED = 1 << 30


@dataclass
class ServedModel:
    name: str
    loaded: InferenceModel
    adapter: str | None  # the peft adapter name in a shared model; None: the model as it is loaded
    stops: Stops
    tokenize_options: TokenizeOptions
    context: int  # most tokens (prompt + reply) the model takes
    created: int

    @classmethod
    def of(cls, name: str, loaded: InferenceModel, adapter: str | None) -> ServedModel:
        config = getattr(loaded.model, "config", None)
        context = getattr(config, "max_position_embeddings", None) or 2048
        # cutoff_len is lifted: a prompt longer than the context is refused, never silently cut
        options = dataclasses.replace(TokenizeOptions.from_config(loaded.config.data), cutoff_len=UNLIMITED)
        stops = find_stops(loaded.model, loaded.tokenizer, loaded.template, loaded.config.generate.stop)
        return cls(name, loaded, adapter, stops, dataclasses.replace(options, num_workers=1), context, int(time.time()))

    @property
    def system(self) -> str | None:
        return self.loaded.config.generate.system_or(self.loaded.config.data)

    def encode_chat(self, conversation: Conversation) -> list[int]:
        loaded = self.loaded
        return encode_prompts([conversation], loaded.tokenizer, loaded.template, self.tokenize_options)[0]

    def encode_text(self, text: str) -> list[int]:
        return list(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The shared peft model set to this adapter, or with adapters off for the base."""
        model = self.loaded.model
        if not hasattr(model, "disable_adapter"):
            yield
        elif self.adapter is None:
            with model.disable_adapter():
                yield
        else:
            model.set_adapter(self.adapter)
            yield


def model_name(location: str | None) -> str:
    if location is None:
        return DEFAULT_NAME
    path = Path(location)
    return path.stem if path.suffix == ".gguf" else (path.name if path.exists() else location)


def adapter_name(path: str) -> str:
    """A run folder's name; for a step-N folder, its run's name."""
    folder = Path(path).resolve()
    return folder.parent.name if folder.name.startswith("step-") else folder.name


def is_run(path: str) -> bool:
    """A training checkpoint or run folder (not a plain model folder, which is served as the base)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    whole_model = (folder / "config.json").is_file() and not (folder / "config.yaml").is_file()
    return not whole_model and (is_checkpoint(folder) or any(folder.glob("step-*")))


def plan_models(
    run_or_model: str | None, adapters: Sequence[tuple[str, str]]
) -> tuple[str | None, str, list[tuple[str, str]]]:
    """(base model location, its served name, adapters by name): the base is `run_or_model` when it is a
    model, else the base the first adapter was trained on; a run given as `run_or_model` comes first,
    under its folder's name."""
    named = list(adapters)
    base_location = run_or_model
    if run_or_model is not None and is_run(run_or_model):
        named.insert(0, (adapter_name(run_or_model), run_or_model))
        base_location = None
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ConfigError("two adapters have the same name", field="--adapter", hint="use --adapter NAME=PATH")
    if base_location is None and named:
        base_location = checkpoint_config(resolve_checkpoint(named[0][1])).model.name_or_path
    base_name = model_name(base_location)
    if base_name in names:
        raise ConfigError(f"an adapter is named like the base model ({base_name})", field="--adapter")
    return base_location, base_name, named


def load_models(
    run_or_model: str | None, adapters: Sequence[tuple[str, str]], device: str | None = None
) -> dict[str, ServedModel]:
    """The base model and every adapter by name (see `plan_models`), loaded for transformers."""
    base_location, base_name, named = plan_models(run_or_model, adapters)
    base = load_for_inference(None, model=base_location, device=device)
    served: dict[str, ServedModel] = {}
    for name, path in named:
        shared = add_named_adapter(base, path, name)
        if shared is not None:
            served[name] = ServedModel.of(name, shared, name)
            continue
        log.warning("%s cannot share the base model's weights (not a LoRA adapter on it): loaded on its own", name)
        served[name] = ServedModel.of(name, load_for_inference(path, device=device), None)
    for entry in served.values():  # the adapters added after an entry was made live in the same peft model
        if entry.adapter is not None:
            entry.loaded.model = base.model
    return {base_name: ServedModel.of(base_name, base, None), **served}


class TransformersBackend:
    """Batched generation with transformers, each batch on one served model."""

    name = "transformers"

    def __init__(self, models: dict[str, ServedModel], settings: ServeSettings) -> None:
        self.models = models
        self.scheduler = Scheduler(
            self.run_batch,
            batch_size=settings.batch_size,
            queue_limit=settings.queue_limit,
            wait_s=settings.batch_wait_ms / 1000,
        )

    def run_batch(self, name: str, rows: Sequence[Row]) -> None:
        served = self.models[name]
        with served.active():
            generate_rows(served.loaded.model, served.loaded.tokenizer, rows, served.stops)

    def close(self) -> None:
        self.scheduler.close()


def describe(models: dict[str, ServedModel]) -> list[str]:
    lines = []
    for served in models.values():
        what = f"checkpoint {served.loaded.checkpoint}" if served.loaded.checkpoint else "base model"
        lines.append(f"{served.name}: {what} (template {served.loaded.template.name}, context {served.context})")
    return lines
