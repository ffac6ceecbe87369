"""Load a run configuration: YAML file, then `key=value` overrides, then validation.

Every problem is collected and reported at once, naming the key, the value and what is allowed,
before anything heavy is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunellm.config.schema import MOVED_KEYS, SECTIONS, RunConfig
from tunellm.errors import ConfigError
from tunellm.registry import did_you_mean

COMMAND_LINE = "command line"


@dataclass(frozen=True)
class Override:
    """A `key=value` with where it came from, for messages: the command line, or the flag that is its shortcut."""

    text: str
    origin: str = COMMAND_LINE


def field_names(section: str) -> dict[str, str]:
    """Every accepted key of a section (names and aliases) mapped to its canonical name."""
    names: dict[str, str] = {}
    for model in SECTIONS[section]:
        for name, info in model.model_fields.items():
            names[name] = name
            choices = getattr(info.validation_alias, "choices", None) or []
            for alias in choices:
                names[str(alias)] = name
    return names


def resolve_key(key: str) -> tuple[str, list[str]]:
    """Turn `train.max_steps`, `max_steps` or `lora_rank` into (section, canonical path)."""
    parts = key.split(".")
    if parts[0] in SECTIONS:
        section, rest = parts[0], parts[1:]
        if not rest:
            return section, ["name"]  # `method=lora` picks the method
        names = field_names(section)
        if (section, rest[0]) in MOVED_KEYS:
            section, moved = MOVED_KEYS[section, rest[0]]
            return section, [moved, *rest[1:]]
        if rest[0] not in names:
            raise unknown_key(key, [f"{section}.{n}" for n in names])
        return section, [names[rest[0]], *rest[1:]]
    owners = [s for s in SECTIONS if parts[0] in field_names(s)]
    if len(owners) == 1:
        section = owners[0]
        return section, [field_names(section)[parts[0]], *parts[1:]]
    if len(owners) > 1:
        raise ConfigError(
            f"key '{key}' exists in several sections",
            expected="one of " + ", ".join(f"{s}.{key}" for s in owners),
        )
    every = [f"{s}.{n}" for s in SECTIONS for n in field_names(s)] + [n for s in SECTIONS for n in field_names(s)]
    raise unknown_key(key, every)


def unknown_key(key: str, choices: list[str]) -> ConfigError:
    return ConfigError(f"unknown key '{key}'", hint=did_you_mean(key, choices) or "see `tunellm config example`")


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value", expected="key=value, e.g. max_steps=20")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_with_lines(path)[0]


def read_yaml_with_lines(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The file's mapping, and the line of each key (by its path of keys) for messages."""
    if not path.is_file():
        raise ConfigError("config file not found", file=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        content = yaml.safe_load(text)
        lines = key_lines(yaml.compose(text))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and start is not None:  # "while parsing a flow sequence", where it started
            problem += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
        raise ConfigError(f"not valid YAML: {problem}", file=str(path), line=mark.line + 1 if mark else None) from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(
            "a config file must be a mapping of sections", file=str(path), expected=" / ".join(SECTIONS) + " sections"
        )
    return content, lines


def key_lines(node: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*path, str(key.value))
            lines[here] = key.start_mark.line + 1
            lines.update(key_lines(value, here))
    return lines


def canonical(
    raw: dict[str, Any], problems: list[str], origin: str = "", lines: dict[tuple[str, ...], int] | None = None
) -> dict[str, Any]:
    """Check section names and rename aliases (`lora_rank` to `r`) so overrides meet the same keys."""
    result: dict[str, Any] = {}
    for section, body in raw.items():
        line = (lines or {}).get((str(section),))
        where = f"{origin}{f', line {line}' if line else ''}: " if origin else ""
        if section not in SECTIONS:
            hint = did_you_mean(str(section), list(SECTIONS))
            problems.append(f"  {where}{section}: unknown section" + (f"; {hint}" if hint else ""))
            continue
        if isinstance(body, str) and section == "method":
            body = {"name": body}
        if not isinstance(body, dict):
            problems.append(f"  {where}{section} = {body!r}: a section must be a mapping")
            continue
        names = field_names(section)
        result[section] = {names.get(key, key): value for key, value in body.items()}
    return result


def set_path(config: dict[str, Any], section: str, path: list[str], value: Any) -> None:
    node = config.setdefault(section, {})
    for part in path[:-1]:
        if node.get(part) is None:  # a saved config.yaml holds `rope_scaling: null`; a dotted key fills it in
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{'.'.join([section, *path])}': '{part}' is not a mapping")
    node[path[-1]] = value


def switch_method(method: dict[str, Any], from_file: dict[str, Any], overridden: set[str]) -> dict[str, Any]:
    """`method=ptuning_v2` on the command line switches methods: the file's keys the new one lacks are dropped."""
    chosen = next((m for m in SECTIONS["method"] if m.model_fields["name"].default == method.get("name")), None)
    if chosen is None or from_file.get("name", "lora") == method.get("name"):
        return method
    return {key: value for key, value in method.items() if key in chosen.model_fields or key in overridden}


def check_keys(overrides: Sequence[str | Override]) -> None:
    """Refuse malformed overrides and unknown keys, all at once, before anything else: commands whose config comes
    from a checkpoint (chat, predict, eval, merge) call it first, so a typo fails before torch is imported."""
    problems = []
    for item in overrides:
        text, where = (item.text, item.origin) if isinstance(item, Override) else (item, COMMAND_LINE)
        try:
            resolve_key(parse_override(text)[0])
        except ConfigError as error:
            problems.append(f"  {where}: {error}".replace("\n", "\n  "))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the configuration:\n" + "\n".join(problems))


def load_config(path: str | Path | None = None, overrides: Sequence[str | Override] | None = None) -> RunConfig:
    """The file, then the overrides in order (later wins), validated. Every problem is reported at once, each
    naming where its value came from: the file (with its line), the command line, or a flag."""
    origin = str(path) if path else None
    problems: list[str] = []
    raw, lines = read_yaml_with_lines(Path(path)) if path else ({}, {})
    raw = canonical(raw, problems, origin or "", lines)
    from_file = dict(raw.get("method") or {}) if isinstance(raw.get("method"), dict) else {}
    overridden: set[str] = set()
    sources: dict[tuple[str, ...], str] = {}
    for item in overrides or []:
        text, where = (item.text, item.origin) if isinstance(item, Override) else (item, COMMAND_LINE)
        try:
            key, value = parse_override(text)
            section, field_path = resolve_key(key)
            set_path(raw, section, field_path, value)
            sources[(section, *field_path)] = where
            if section == "method":
                overridden.add(field_path[0])
        except ConfigError as error:
            problems.append(f"  {where}: {error}".replace("\n", "\n  "))
    if "name" in overridden and isinstance(raw.get("method"), dict):
        raw["method"] = switch_method(raw["method"], from_file, overridden)
    if isinstance(raw.get("method"), dict):
        raw["method"].setdefault("name", "lora")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as error:
        problems.extend(describe(error, raw, Origins(sources, origin, lines)))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the configuration:\n" + "\n".join(problems))
    return config


@dataclass
class Origins:
    """Where each value came from: overrides by key path, else the file (and the key's line there)."""

    overrides: dict[tuple[str, ...], str]
    file: str | None
    lines: dict[tuple[str, ...], int]

    def of(self, loc: list[str]) -> str:
        for size in range(len(loc), 0, -1):
            if tuple(loc[:size]) in self.overrides:
                return self.overrides[tuple(loc[:size])]
        if self.file is None:
            return "default"
        for size in range(len(loc), 0, -1):
            if tuple(loc[:size]) in self.lines:
                return f"{self.file}, line {self.lines[tuple(loc[:size])]}"
        return self.file


def describe(error: ValidationError, raw: dict[str, Any], origins: Origins) -> list[str]:
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if loc[:1] == ["method"] and len(loc) > 1 and loc[1] == raw.get("method", {}).get("name", "lora"):
            loc.pop(1)  # pydantic puts the union tag in the path
        key = ".".join(loc)
        where = f"{origins.of(loc)}: "
        if item["type"] == "extra_forbidden" and loc[0] == "method":
            name = raw.get("method", {}).get("name", "lora")
            chosen = [m for m in SECTIONS["method"] if m.model_fields["name"].default == name]
            known = list(chosen[0].model_fields) if chosen else []
            hint = did_you_mean(loc[-1], known) or "its keys: " + ", ".join(known)
            lines.append(f"  {where}{key}: not an option of method {name}; {hint}")
            continue
        if item["type"] == "extra_forbidden":
            hint = did_you_mean(loc[-1], list(field_names(loc[0]))) if loc[0] in SECTIONS else None
            lines.append(f"  {where}{key}: unknown key" + (f"; {hint}" if hint else ""))
            continue
        allowed = item.get("ctx", {}).get("expected")
        line = f"  {where}{key} = {item['input']!r}: {item['msg']}"
        if allowed and str(allowed) not in item["msg"]:
            line += f" (allowed: {allowed})"
        lines.append(line)
    return lines


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
