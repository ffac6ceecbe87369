"""Predict over a data file: one generated reply per record, written as JSON Lines.

Records are read in any tunellm format with `require_response=False`: a record that ends with an
assistant reply keeps that reply as its `reference` and the model answers the turns before it.
Each output line holds `source` (file:line), `prompt` (the last user or tool message), `output`,
`finish_reason`, `reference` when there is one, and the record's `extra` fields. The file is written
to a temporary name and renamed, so it is either complete or absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunellm.atomic import write_jsonl_atomic
from tunellm.data.prepare import read_data
from tunellm.data.read import expand_paths
from tunellm.data.record import Conversation
from tunellm.data.templates.tools import reply_text
from tunellm.data.tokenize import TokenizeOptions
from tunellm.errors import ConfigError, DataError, TunellmError
from tunellm.infer.generate import Generation, SamplingOptions, generate
from tunellm.infer.load import InferenceModel


@dataclass
class PredictSummary:
    output: Path
    rows: int
    skipped: list[TunellmError] = field(default_factory=list)  # bad records, with data.skip_bad
    stopped: int = 0  # replies that ended at EOS or a stop string (the rest hit max_new_tokens)


def split_reference(conversation: Conversation) -> tuple[Conversation, str | None]:
    """(the conversation to answer, the reference reply or None)."""
    if not conversation.has_response:
        return conversation, None
    if len(conversation.turns) == 1:
        source = conversation.source
        raise DataError(
            "the record has a reply but no prompt to answer",
            file=source.file,
            line=source.line,
            index=source.index,
            hint="plain text (one document per record) cannot be predicted; give prompts",
        )
    prompt = Conversation(
        conversation.turns[:-1], conversation.source, conversation.system, conversation.tools, conversation.extra
    )
    return prompt, reply_text(conversation.turns[-1])


def prediction_row(conversation: Conversation, generation: Generation, reference: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source": str(conversation.source),
        "prompt": conversation.turns[-1].content,
        "output": generation.text,
        "finish_reason": generation.finish_reason,
    }
    if reference is not None:
        row["reference"] = reference
    if conversation.extra:
        row["extra"] = conversation.extra
    return row


@contextmanager
def progress_bar(total: int, show: bool) -> Iterator[Callable[[int], None] | None]:
    """A callback setting rows done on a bar on stderr; None when not shown or not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not show or not console.is_terminal:
        yield None
        return
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("predict", total=total)
        yield lambda done: progress.update(task, completed=done)


def check_output(output: Path, inputs: list[str]) -> None:
    if any(output.resolve() == Path(file).resolve() for file in inputs):
        raise ConfigError("the output file is one of the input files", file=str(output), field="--output")


def predict(
    loaded: InferenceModel,
    data: list[str],
    output: str | Path,
    options: SamplingOptions | None = None,
    *,
    batch_size: int = 8,
    show_progress: bool = False,
) -> PredictSummary:
    """Generate a reply for every record of `data` and write them to `output` (JSON Lines), in input order.

    Records are read with the loaded config's data options (format, columns, placeholders), so they are rendered
    as in training; `options` default to the config's `generate:` section, whose system prompt (else data.system)
    applies to records without one.
    """
    output = Path(output)
    check_output(output, expand_paths(data))
    config = loaded.config
    data_options = config.data.model_copy(update={"system": config.generate.system_or(config.data)})
    result = read_data(data, data_options, require_response=False)
    pairs = [split_reference(conversation) for conversation in result.conversations]
    prompts = [prompt for prompt, _ in pairs]
    with progress_bar(len(prompts), show_progress) as on_batch:
        generations = generate(
            loaded.model,
            loaded.tokenizer,
            loaded.template,
            prompts,
            options or SamplingOptions.from_config(config.generate),
            batch_size=batch_size,
            tokenize_options=TokenizeOptions.from_config(config.data),
            on_batch=on_batch,
        )
    rows = [
        prediction_row(prompt, generation, reference)
        for (prompt, reference), generation in zip(pairs, generations, strict=True)
    ]
    write_jsonl_atomic(output, rows)
    stopped = sum(g.finish_reason == "stop" for g in generations)
    return PredictSummary(output, len(rows), list(result.bad), stopped)
