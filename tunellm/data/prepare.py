"""From data files to a tokenized set: read, choose the template, tokenize through the cache.

The training command, `tunellm data stats`/`preview` and evaluation all come through here, so they
read, render and mask a record the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunellm.config.schema import DataConfig
from tunellm.data.cache import load_or_tokenize
from tunellm.data.formats import ReadOptions
from tunellm.data.read import ReadResult, expand_paths, read_conversations
from tunellm.data.record import Conversation
from tunellm.data.templates import Template, get_template
from tunellm.data.tokenize import TokenizedDataset, TokenizeOptions
from tunellm.errors import DataError


def read_data(paths: list[str], data: DataConfig, *, require_response: bool = True) -> ReadResult:
    """Every record of `paths`; stops at the first bad one unless `data.skip_bad`."""
    if not paths:
        raise DataError("no data files given", field="data.train", hint="pass files, or set data.train in the config")
    options = ReadOptions.from_config(data, require_response=require_response)
    return read_conversations(paths, options, format=data.format, skip_bad=data.skip_bad)


def is_plain_text(paths: list[str], data: DataConfig) -> bool:
    if data.format != "auto":
        return data.format == "text"
    return bool(paths) and all(Path(path).suffix == ".txt" for path in paths)


def choose_template(paths: list[str], data: DataConfig, tokenizer: Any, family_template: str | None = None) -> Template:
    """`data.template`, or for `auto`: none for plain text, else the family's or the tokenizer's own."""
    name = data.template
    if name == "auto":
        name = "none" if is_plain_text(paths, data) else (family_template or "auto")
    return get_template(name, tokenizer, family_default="alpaca")


def check_template_fits(result: ReadResult, data: DataConfig, template: Template) -> None:
    """Plain text read through a chat template would train on chat markup: stop and say so."""
    text_files = [file for file, fmt in result.formats.items() if fmt == "text"]
    if text_files and data.template == "auto" and template.name != "none":
        raise DataError(
            "plain-text records would be wrapped in the chat template",
            file=text_files[0],
            field="data.template",
            hint="for continued pretraining set format=text (or template=none)",
        )


def read_options_key(data: DataConfig) -> dict[str, Any]:
    """The read settings that change the records, for the cache key."""
    return data.model_dump(include={"format", "columns", "placeholders", "text_unit", "system", "skip_bad"})


def tokenized_training_set(paths: list[str], data: DataConfig, tokenizer: Any, template: Template) -> TokenizedDataset:
    """The tokenized set of `paths`, from the cache when possible.

    `dataset.report.read_summary` says what reading found (records read, skipped ones with their
    locations), also on a warm run that did not read the files.
    """
    read: list[ReadResult] = []

    def conversations() -> list[Conversation]:
        result = read_data(paths, data)
        check_template_fits(result, data, template)
        read.append(result)
        return result.conversations

    return load_or_tokenize(
        conversations,
        expand_paths(paths),
        tokenizer,
        template,
        TokenizeOptions.from_config(data),
        read_options=read_options_key(data),
        cache_dir=data.cache_dir,
        describe_read=lambda: read[0].summary(),
    )
