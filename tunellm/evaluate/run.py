"""Score a model on a data file: generate, compute loss, detect each row's task, score per task and overall.

Records are read and rendered with the checkpoint's own data options and template (as `predict` does), so
the prompts and the loss's tokens are those training saw. A record's last assistant reply is its reference;
a record without one is generated for but not scored.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tunellm.atomic import write_json_atomic, write_jsonl_atomic
from tunellm.config.schema import RunConfig
from tunellm.data.prepare import read_data
from tunellm.data.record import Conversation
from tunellm.data.templates import Template
from tunellm.data.tokenize import TokenizeOptions
from tunellm.errors import DataError
from tunellm.evaluate.loss import row_losses
from tunellm.evaluate.metrics import score_rows
from tunellm.evaluate.tasks import EvalRow, detect_kinds, group_of
from tunellm.infer.generate import Generation, SamplingOptions, generate
from tunellm.infer.load import InferenceModel
from tunellm.infer.predict import progress_bar, split_reference

T = TypeVar("T")
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
# (prompts, sampling, tokenize options) -> one Generation per prompt; transformers' by default, or vLLM's
Generator = Callable[[Sequence[Conversation], SamplingOptions, TokenizeOptions], list[Generation]]


@dataclass
class EvalResult:
    label: str  # "base", "step-40", ...: the column name when models are compared
    model: str  # what was loaded, in words
    overall: dict[str, Any]
    groups: dict[str, dict[str, Any]]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {"label": self.label, "model": self.model, "overall": self.overall, "groups": self.groups}


def pick_rows(items: Sequence[T], max_rows: int | None) -> list[T]:
    """All items, or `max_rows` of them spread evenly in file order: a file sorted by task still gives every task."""
    if max_rows is None or len(items) <= max_rows:
        return list(items)
    return [items[i * len(items) // max_rows] for i in range(max_rows)]


def read_eval_data(data: list[str], config: RunConfig, max_rows: int | None = None) -> list[Conversation]:
    options = config.data.model_copy(update={"system": config.generate.system_or(config.data)})
    conversations = read_data(data, options, require_response=False).conversations
    if not conversations:
        raise DataError("no records to evaluate", file=", ".join(data))
    return pick_rows(conversations, max_rows)


def hf_generator(
    model: Any, tokenizer: Any, template: Template, batch_size: int, on_batch: Callable[[int], None] | None = None
) -> Generator:
    def run(prompts: Sequence[Conversation], options: SamplingOptions, tokenize: TokenizeOptions) -> list[Generation]:
        return generate(
            model,
            tokenizer,
            template,
            prompts,
            options,
            batch_size=batch_size,
            tokenize_options=tokenize,
            on_batch=on_batch,
        )

    return run


def score_conversations(
    conversations: Sequence[Conversation],
    generator: Generator,
    options: SamplingOptions,
    tokenize_options: TokenizeOptions,
    *,
    group_by: str = "auto",
    losses: Callable[[list[Conversation]], list[tuple[float, int]]] | None = None,
) -> tuple[list[EvalRow], list[dict[str, Any]]]:
    """(scored rows, prediction lines): generate for every record, then the loss of those with a reference."""
    pairs = [split_reference(conversation) for conversation in conversations]
    generations = generator([prompt for prompt, _ in pairs], options, tokenize_options)
    answered = [i for i, conversation in enumerate(conversations) if conversation.has_response]
    per_row = [(0.0, 0)] * len(conversations)
    if losses is not None and answered:
        for index, value in zip(answered, losses([conversations[i] for i in answered]), strict=True):
            per_row[index] = value
    references = [reference for _, reference in pairs]
    extras = [conversation.extra for conversation in conversations]
    kinds = detect_kinds(references, extras)
    rows, lines = [], []
    for i, ((prompt, reference), generation) in enumerate(zip(pairs, generations, strict=True)):
        loss_sum, tokens = per_row[i]
        row = EvalRow(
            generation.text, reference, extras[i], kinds[i], group_of(kinds[i], extras[i], group_by), loss_sum, tokens
        )
        rows.append(row)
        lines.append(prediction_line(prompt, row, generation))
    return rows, lines


def prediction_line(prompt: Conversation, row: EvalRow, generation: Generation) -> dict[str, Any]:
    line: dict[str, Any] = {
        "source": str(prompt.source),
        "input": prompt.turns[-1].content,
        "reference": row.reference,
        "output": row.output,
        "finish_reason": generation.finish_reason,
        "kind": row.kind,
        "group": row.group,
        "loss": round(row.loss_sum / row.tokens, 6) if row.tokens else None,
    }
    if prompt.extra:
        line["extra"] = prompt.extra
    return line


def summarize(rows: Sequence[EvalRow]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(overall scores, scores per group), each with `rows` and `scored` counts."""
    groups: dict[str, list[EvalRow]] = defaultdict(list)
    for row in rows:
        groups[row.group].append(row)
    return score_rows(rows), {name: score_rows(members) for name, members in sorted(groups.items())}


def evaluate_model(
    loaded: InferenceModel,
    conversations: Sequence[Conversation],
    options: SamplingOptions,
    *,
    label: str,
    batch_size: int = 8,
    generator: Generator | None = None,
    show_progress: bool = False,
) -> EvalResult:
    """Generate, compute loss, and score `conversations` with `loaded` (and its data options and template)."""
    config = loaded.config
    tokenize_options = TokenizeOptions.from_config(config.data)

    def losses(answered: list[Conversation]) -> list[tuple[float, int]]:
        return row_losses(
            loaded.model, loaded.tokenizer, loaded.template, answered, tokenize_options, batch_size=batch_size
        )

    with progress_bar(len(conversations), show_progress and generator is None) as on_batch:
        generator = generator or hf_generator(loaded.model, loaded.tokenizer, loaded.template, batch_size, on_batch)
        rows, lines = score_conversations(
            conversations, generator, options, tokenize_options, group_by=config.eval.group_by, losses=losses
        )
    overall, groups = summarize(rows)
    return EvalResult(label, describe_model(loaded), overall, groups, lines)


def describe_model(loaded: InferenceModel) -> str:
    base = loaded.config.model.name_or_path or "the embedded default model"
    return f"{loaded.checkpoint} on {base}" if loaded.checkpoint else base


def write_result(result: EvalResult, folder: Path) -> list[Path]:
    """`metrics.json` and `predictions.jsonl` in `folder`; returns their paths."""
    write_json_atomic(folder / METRICS_FILE, rounded(result.metrics()))
    write_jsonl_atomic(folder / PREDICTIONS_FILE, result.predictions)
    return [folder / METRICS_FILE, folder / PREDICTIONS_FILE]


def rounded(tree: Any, digits: int = 6) -> Any:
    if isinstance(tree, float):
        return round(tree, digits) if math.isfinite(tree) else None
    if isinstance(tree, dict):
        return {key: rounded(value, digits) for key, value in tree.items()}
    return tree
