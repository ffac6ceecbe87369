"""Fixtures shared across test folders. Keep it small: add a fixture here only when two files need it."""

import pytest


@pytest.fixture(scope="session")
def default_tokenizer():
    """The embedded default tokenizer (SmolLM2-135M-Instruct, ChatML template); loading takes a few seconds."""
    from tunellm.config.schema import ModelConfig
    from tunellm.models.tokenizer import load_tokenizer

    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from more threads, and on 2 shared cores 2 threads run about 3x slower.

    Use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama():
    """A factory: a seeded tiny random llama (hidden 64, 2 layers) with `vocab` ids, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunellm.models.families.base import llama_style_tiny

    def build(vocab: int, seed: int = 0, **overrides):
        fields = llama_style_tiny("llama", vocab_size=vocab, max_position_embeddings=512, **overrides)
        fields.pop("model_type")
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**fields)).eval()

    return build


@pytest.fixture(scope="session")
def tiny_llama_dir(default_tokenizer, tiny_llama, tmp_path_factory):
    """A saved tiny llama with the default tokenizer's 49,152 ids and the tokenizer beside it; the same weights
    in every session."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = default_tokenizer
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    tiny_llama(len(tokenizer), pad_token_id=tokenizer.pad_token_id, **ids).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
