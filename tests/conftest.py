"""Fixtures shared across test folders. Keep it small: add a fixture here only when two files need it."""

import pytest


@pytest.fixture(scope="session")
def default_tokenizer():
    """The embedded default tokenizer (SmolLM2-135M-Instruct, ChatML template); loading takes a few seconds."""
    from tunellm.config.schema import ModelConfig
    from tunellm.models.tokenizer import load_tokenizer

    return load_tokenizer(ModelConfig())
