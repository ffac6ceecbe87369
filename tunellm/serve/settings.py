"""Server settings: where it listens, who may call it, and the limits that keep it alive under load."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

API_KEY_VARIABLE = "TUNELLM_API_KEY"


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer KEY`
    batch_size: int = Field(16, ge=1)  # most requests generated together
    batch_wait_ms: float = Field(20, ge=0)  # how long a batch waits for more requests to arrive
    queue_limit: int = Field(64, ge=1)  # requests queued or running; more get 429
    max_tokens_cap: int = Field(512, ge=1)  # the longest reply, whatever a request asks for
    backend: Literal["auto", "transformers", "vllm"] = "auto"  # auto: vLLM when usable

    def with_env_key(self) -> ServeSettings:
        """The API key from TUNELLM_API_KEY when none was given."""
        if self.api_key is None and os.environ.get(API_KEY_VARIABLE):
            return self.model_copy(update={"api_key": os.environ[API_KEY_VARIABLE]})
        return self
