"""The base of every config section: unknown keys are errors, aliases are accepted, assignments are checked."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)
