"""A commented example configuration, generated from the schema so it cannot drift from it."""

from __future__ import annotations

import json

import yaml
from pydantic import BaseModel

from tunellm.config.schema import SECTIONS, RunConfig

SECTION_TITLES = {
    "model": "which model to tune",
    "data": "training data: files, format, template, tokenization",
    "method": "how to tune it",
    "train": "the training loop (names follow transformers' TrainingArguments)",
    "eval": "scoring",
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
        for model in models:
            for name, info in model.model_fields.items():
                comment = info.description or ""
                if section == "method" and name == "name":
                    comment = "tuning method"
                aliases = [a for a in getattr(info.validation_alias, "choices", []) or [] if a != name]
                if aliases:
                    comment += f" (also: {', '.join(map(str, aliases))})"
                value = getattr(values, name)
                lines.append(f"  {name}: {yaml_value(value)}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"
