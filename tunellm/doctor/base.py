"""What every doctor check shares: its result, the run it looks at, and the registry of check groups.

A check group is a function `(Context) -> list[Result]` in its own module under `tunellm/doctor/checks/`,
registered with `@CHECKS.register(name)` and imported by one line in that folder's `__init__`. The Context
loads what checks need (tokenizer, template, records, the model's config.json) once, lazily, and never
the weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from tunellm.config.schema import RunConfig
from tunellm.doctor.hardware import Hardware
from tunellm.errors import TunellmError
from tunellm.registry import Registry

Status = Literal["pass", "warn", "fail"]


@dataclass
class Result:
    """One check's verdict. `sure` marks a failure certain enough that `tunellm train` refuses to start."""

    name: str
    status: Status
    message: str
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    sure: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {"check": self.name, "status": self.status, "message": self.message}
        if self.details:
            out["details"] = self.details
        if self.data:
            out["data"] = self.data
        if self.sure:
            out["refuses_training"] = True
        return out


@dataclass(frozen=True)
class Parallel:
    """How the run would be spread: processes, and what is sharded across them."""

    world_size: int = 1
    sharding: str = "none"  # none, ddp, zero1, zero2, zero3, fsdp


class Context:
    """The run under examination; every heavy input is loaded on first use and kept. `tokenizer` and
    `template` may be handed in by `tunellm train`, which has them already."""

    def __init__(
        self,
        config: RunConfig,
        hardware: Hardware | Callable[[], Hardware] | None = None,
        parallel: Parallel = Parallel(),
        tokenizer: Any = None,
        template: Any = None,
        longest_row: int | None = None,
        rows: int | None = None,
    ) -> None:
        self.config = config
        self._hardware = hardware
        self.parallel = parallel
        if tokenizer is not None:
            self.__dict__["tokenizer"] = tokenizer
        if template is not None:
            self.__dict__["template"] = template
        if longest_row is not None:
            self.__dict__["longest_row"] = longest_row
        if rows is not None:
            self.__dict__["rows"] = rows

    @cached_property
    def hardware(self) -> Hardware:
        if isinstance(self._hardware, Hardware):
            return self._hardware
        from tunellm.doctor.hardware import detect

        return (self._hardware or detect)()

    @cached_property
    def location(self) -> tuple[str, str | None]:
        from tunellm.models.tokenizer import model_location

        return model_location(self.config.model)

    @cached_property
    def model_config(self) -> dict[str, Any]:
        """config.json (or the GGUF metadata) as a dict, without running checkpoint code."""
        from tunellm.models.load import check_remote_code, read_config_dict

        location, gguf_file = self.location
        if gguf_file is None:
            raw = read_config_dict(location)
            check_remote_code(raw, self.config.model, location)
            return raw
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(location, gguf_file=gguf_file).to_dict()

    @cached_property
    def family(self) -> Any:
        from tunellm.models.families import family_for

        return family_for(self.model_config.get("model_type"))

    @cached_property
    def generation_config(self) -> dict[str, Any]:
        """generation_config.json of a local model folder; {} when there is none."""
        location, _ = self.location
        path = Path(location) / "generation_config.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    @cached_property
    def tokenizer(self) -> Any:
        from tunellm.models.load import load_tokenizer_and_template

        tokenizer, family_template = load_tokenizer_and_template(self.config.model)
        self.__dict__["family_template"] = family_template
        return tokenizer

    @cached_property
    def family_template(self) -> str | None:
        self.tokenizer  # noqa: B018  (loading the tokenizer sets it)
        return self.__dict__.get("family_template")

    @cached_property
    def template(self) -> Any:
        from tunellm.data.prepare import choose_template

        return choose_template(self.config.data.train, self.config.data, self.tokenizer, self.family_template)

    @cached_property
    def data_stats(self) -> Any:
        """Token lengths before and after truncation of the training rows (`tunellm data stats`)."""
        from tunellm.data.inspect import compute_stats
        from tunellm.data.tokenize import TokenizeOptions

        read = self.read(self.config.data.train)
        return compute_stats(read, self.tokenizer, self.template, TokenizeOptions.from_config(self.config.data))

    @cached_property
    def longest_row(self) -> int | None:
        """Tokens of the longest training row after truncation (a padded batch's length); None without data."""
        if not self.config.data.train or not self.read(self.config.data.train).conversations:
            return None
        stats = self.data_stats
        return int(min(stats.cutoff_len, (stats.prompt_lengths + stats.response_lengths).max()))

    @cached_property
    def rows(self) -> int | None:
        """Training rows read (before truncation drops any); None without data."""
        return len(self.read(self.config.data.train).conversations) if self.config.data.train else None

    def read(self, paths: list[str]) -> Any:
        """Every record of `paths`, bad ones skipped and listed (a check reports them)."""
        from tunellm.data.prepare import read_data

        key = ("read", *paths)
        if key not in self.__dict__:
            data = self.config.data.model_copy(update={"skip_bad": True})
            self.__dict__[key] = read_data(paths, data)
        return self.__dict__[key]


CheckGroup = Callable[[Context], list[Result]]
CHECKS: Registry[CheckGroup] = Registry("doctor check")


def run_checks(context: Context, names: list[str] | None = None) -> list[Result]:
    """Every registered group (or those named), in registration order; a group that cannot run reports why."""
    groups = [(name, CHECKS.get(name)) for name in names or CHECKS.names()]  # an unknown name stops here
    results: list[Result] = []
    for name, group in groups:
        try:
            results += group(context)
        except TunellmError as error:
            results.append(Result(name, "fail", str(error).split("\n")[0], details=str(error).split("\n")[1:]))
    return results
