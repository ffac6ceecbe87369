"""The shared loss: the chunked path equals the reference in value and gradients, projects only trained positions,
and steps aside where the head is not a plain projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunellm.data.pack import collate
from tunellm.train import loss as loss_module
from tunellm.train.loss import chunk_blocker, row_loss_sums, token_loss_sum, trained_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(tied: bool = False, seed: int = 0, **extra) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        **extra,
    )
    return LlamaForCausalLM(config)


def batch(seed: int = 0, n: int = 5):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ids = rng.integers(1, 512, int(rng.integers(3, 30)))
        labels = ids.copy()
        labels[: len(ids) // 2] = -100  # a masked prompt
        rows.append({"input_ids": ids, "labels": labels})
    return collate(rows, pad_id=0)


def loss_and_grads(model, data, path, chunk=loss_module.CHUNK):
    model.zero_grad(set_to_none=True)
    summed, tokens = token_loss_sum(model, data, path, chunk)
    summed.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return float(summed.detach()), tokens, grads


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_chunked_loss_and_gradients_equal_the_reference_full_model(tied, chunk):
    model, data = tiny(tied).train(), batch()
    assert chunk_blocker(model) is None
    ref_loss, ref_tokens, ref_grads = loss_and_grads(model, data, "reference")
    loss, tokens, grads = loss_and_grads(model, data, "chunked", chunk)
    assert tokens == ref_tokens == trained_tokens(data)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    assert tied or "lm_head.weight" in grads
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_loss_and_gradients_equal_the_reference_under_lora():
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model, data = get_peft_model(tiny(), lora).train(), batch(1)
    assert chunk_blocker(model) is None
    ref_loss, _, ref_grads = loss_and_grads(model, data, "reference")
    loss, _, grads = loss_and_grads(model, data, "chunked", 5)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert ref_grads and grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_only_trained_positions_reach_the_head(monkeypatch):
    seen = []
    real = loss_module._head_loss

    def spy(hidden, *rest):
        seen.append(hidden.shape[0])
        return real(hidden, *rest)

    monkeypatch.setattr(loss_module, "_head_loss", spy)
    model, data = tiny(), batch()
    with torch.no_grad():
        token_loss_sum(model, data, "chunked", 16)
    assert sum(seen) == trained_tokens(data) < data["input_ids"].numel() / 2
    assert max(seen) <= 16


def test_row_sums_match_rows_scored_alone():
    model, data = tiny().eval(), batch(2)
    with torch.no_grad():
        sums, tokens = row_loss_sums(model, data, "chunked")
        ref_sums, ref_tokens = row_loss_sums(model, data, "reference")
        for row in range(data["input_ids"].shape[0]):
            alone = {key: value[row : row + 1] for key, value in data.items()}
            one, count = token_loss_sum(model, alone, "reference")
            assert float(sums[row]) == pytest.approx(float(one), rel=1e-4)
            assert int(tokens[row]) == count == int(ref_tokens[row])
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)


def test_heads_that_are_not_a_plain_projection_keep_the_reference_path():
    lora_head = LoraConfig(r=4, target_modules=["q_proj", "lm_head"])
    assert "not a plain Linear" in chunk_blocker(get_peft_model(tiny(), lora_head))
    prefix = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    assert "prompt learning" in chunk_blocker(get_peft_model(tiny(), prefix))
    hooked = tiny()
    hooked.lm_head.register_forward_hook(lambda module, args, output: output.float())
    assert "forward hooks" in chunk_blocker(hooked)
    capped = tiny()
    capped.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in chunk_blocker(capped)
    # and the fallback still gives the model's own loss
    data = batch()
    with torch.no_grad():
        expected = token_loss_sum(capped, data, "reference")[0]
        assert float(token_loss_sum(capped, data, "chunked")[0]) == pytest.approx(float(expected))
