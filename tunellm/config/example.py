"""A commented example configuration, generated from the schema so it cannot drift from it."""

from __future__ import annotations

import json

import yaml
from pydantic import BaseModel

from tunellm.config.methods import METHOD_CONFIGS
from tunellm.config.schema import SECTIONS, RunConfig

METHOD_NAMES = [model.model_fields["name"].default for model in METHOD_CONFIGS]

SECTION_TITLES = {
    "model": "which model to tune",
    "data": "training data: files, format, template, tokenization",
    "method": "how to tune it",
    "train": "the training loop (names follow transformers' TrainingArguments)",
    "eval": "scoring",
    "generate": "how replies are generated (chat, predict, eval, serve; the CLI's sampling flags set these keys)",
}


def yaml_value(value: object) -> str:
    if isinstance(value, (dict, list)) and not value:
        return json.dumps(value)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def example_yaml() -> str:
    defaults = RunConfig()
    lines = [
        "# tunellm run configuration. Every key can be overridden on the command line:",
        "#   tunellm train run.yaml train.max_steps=20 lora_rank=16",
        "# (a bare key works when it is unique across sections).",
    ]
    for section, models in SECTIONS.items():
        lines += ["", f"# {SECTION_TITLES[section]}", f"{section}:"]
        values: BaseModel = getattr(defaults, section)
        shown: set[str] = set()
        for model in models:
            own = [name for name in model.model_fields if name not in shown]
            if model is not type(values):  # another method: its own keys, commented out
                if own:
                    shared = set(model.model_fields) & shown - {"name"}
                    takes = "the keys above and" if shared else "only"
                    lines.append(f"  # name: {model.model_fields['name'].default} takes {takes}:")
                    lines += [f"  # {line}" for line in field_lines(model, own, model())]
            else:
                lines += field_lines(model, own, values, method=section == "method")
            shown |= set(own)
    return "\n".join(lines) + "\n"


def field_lines(model: type[BaseModel], names: list[str], values: BaseModel, method: bool = False) -> list[str]:
    lines = []
    for name in names:
        info = model.model_fields[name]
        comment = "tuning method: " + ", ".join(METHOD_NAMES) if method and name == "name" else info.description or ""
        aliases = [a for a in getattr(info.validation_alias, "choices", []) or [] if a != name]
        if aliases:
            comment += f" (also: {', '.join(map(str, aliases))})"
        lines.append(f"  {name}: {yaml_value(getattr(values, name))}" + (f"  # {comment}" if comment else ""))
    return lines
