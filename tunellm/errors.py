"""Errors a user can act on: each names where the problem is and what was expected."""

from __future__ import annotations


class TunellmError(Exception):
    """Base error. The CLI prints it without a traceback and exits with status 2."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        index: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.index = index
        self.field = field
        self.expected = expected
        self.hint = hint
        super().__init__(str(self))

    def location(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.index is not None:
            parts.append(f"array index {self.index}")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    def __str__(self) -> str:
        text = self.message
        where = self.location()
        if where:
            text = f"{where}: {text}"
        if self.expected:
            text += f" (expected {self.expected})"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ConfigError(TunellmError):
    """The run configuration is invalid; raised before anything heavy is loaded."""


class DataError(TunellmError):
    """A data file or one of its records is malformed."""


class ModelError(TunellmError):
    """A model, tokenizer or checkpoint cannot be found or loaded."""


class TrainingError(TunellmError):
    """Training cannot go on (the loss or gradients stayed non-finite); the last good state is saved first."""
