"""Packed batches: per-sample losses and gradients equal the same samples padded; deterministic per (seed, epoch);
the step plan counts packed micro-batches; models that cannot pack fall back to padded and say why."""

from __future__ import annotations

import logging
import types

import numpy as np
import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunellm.config.schema import TrainConfig
from tunellm.data.pack import collate, collate_packed, lay_out, pack_order, real_tokens
from tunellm.train import fit
from tunellm.train.batching import PackedBatcher, PaddedBatcher, make_batcher, packing_blocker
from tunellm.train.loss import token_losses, trained_tokens
from tunellm.train.optim import StepPlan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed: int = 0, attention: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, attn_implementation=attention,
    )  # fmt: skip
    return LlamaForCausalLM(config).float()


def rows(n: int, seed: int = 0, lengths=(1, 30)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(1, 256, int(rng.integers(*lengths)))
        labels = ids.copy()
        labels[: len(ids) // 3] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def per_sample(model, batch, samples: int, owner: torch.Tensor, path: str) -> torch.Tensor:
    """Summed token loss of each sample; `owner` maps each flat position to its sample."""
    losses, index = token_losses(model, batch, path)
    return torch.zeros(samples).index_add(0, owner.flatten()[index], losses)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("path", ["reference", "chunked"])
def test_packed_losses_and_gradients_equal_the_padded_ones(attention, path):
    model, data = tiny(attention=attention).train(), rows(9)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    model = get_peft_model(model, lora)

    def run(batch, owner):
        model.zero_grad(set_to_none=True)
        losses = per_sample(model, batch, len(data), owner, path)
        losses.sum().backward()
        return losses.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    padded = collate(data, pad_id=0)
    padded_losses, padded_grads = run(padded, torch.arange(len(data)).unsqueeze(1).expand_as(padded["input_ids"]))
    packed = collate_packed(data, pad_id=0, row_len=40)
    assert packed["input_ids"].shape[0] > 1 and "attention_mask" not in packed  # several rows, several samples each
    assert trained_tokens(packed) == trained_tokens(padded) and real_tokens(packed) == real_tokens(padded)
    packed_losses, packed_grads = run(packed, packed["sequence_ids"].clamp(min=0))
    torch.testing.assert_close(packed_losses, padded_losses, rtol=1e-4, atol=1e-5)
    for name in padded_grads:
        torch.testing.assert_close(packed_grads[name], padded_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_without_restarting_positions_samples_would_see_each_other():
    """Negative control: the same packed row with running position ids (one long sequence) changes the losses."""
    model, data = tiny().eval(), rows(6, lengths=(5, 20))
    packed = collate_packed(data, pad_id=0, row_len=1000)
    owner = packed["sequence_ids"].clamp(min=0)
    with torch.no_grad():
        right = per_sample(model, packed, len(data), owner, "reference")
        running = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).unsqueeze(0))
        wrong = per_sample(model, running, len(data), owner, "reference")
    assert not torch.allclose(right[1:], wrong[1:], rtol=1e-3)


def test_packing_fills_the_budget_in_order_and_lays_out_rows_evenly():
    lengths = [5, 3, 7, 2, 9, 1, 4]
    assert pack_order(lengths, [0, 1, 2, 3, 4, 5, 6], 10) == [[0, 1], [2, 3], [4, 5], [6]]
    assert pack_order([12, 3], [0, 1], 10) == [[0], [1]]  # a sample longer than the budget goes alone
    layout = lay_out([9, 8, 7, 3, 3, 2], row_len=16)
    assert sorted(i for row in layout for i in row) == list(range(6))
    assert len(layout) == 2 and sorted(sum([9, 8, 7, 3, 3, 2][i] for i in row) for row in layout) == [15, 17]
    batch = collate_packed(rows(3, lengths=(4, 6)), pad_id=0, row_len=4)
    assert (batch["position_ids"][batch["sequence_ids"] < 0] >= 0).all()  # padding restarts its own positions


def test_packed_epochs_are_deterministic_per_seed_and_epoch_and_split_evenly():
    lengths = np.random.default_rng(0).integers(1, 50, 100)
    batcher = PackedBatcher(lengths, budget=200, row_len=64, seed=3, pad_id=0)
    first = batcher.epoch(0)
    assert first == PackedBatcher(lengths, 200, 64, 3, 0).epoch(0) != batcher.epoch(1)
    assert sorted(i for b in first for i in b) == list(range(100))
    assert all(sum(lengths[i] for i in b) <= 200 for b in first)
    # the same permutation as the padded batcher's, so only the cut differs
    assert [i for b in first for i in b] == [i for b in PaddedBatcher(100, 7, 3, 0).epoch(0) for i in b]
    halves = [PackedBatcher(lengths, 200, 64, 3, 0, rank, 2).epoch(0) for rank in (0, 1)]
    assert len(halves[0]) == len(halves[1])


def test_step_plan_counts_each_epochs_packed_micro_batches():
    counts = {0: 7, 1: 6, 2: 8}
    config = TrainConfig(num_train_epochs=2.5, gradient_accumulation_steps=2)
    plan = StepPlan.make(config, counts.__getitem__)
    assert plan.total_steps == 4 + 3 + 2  # ceil(7/2) + ceil(6/2) + ceil(0.5 * ceil(8/2))
    assert plan.steps_per_epoch == 4


def test_models_that_cannot_pack_fall_back_to_padded_and_say_why(caplog):
    config = TrainConfig(batching="packed")
    assert isinstance(make_batcher(config, tiny(), rows(4), 0), PackedBatcher)
    prefix = get_peft_model(tiny(), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert "P-Tuning v2" in packing_blocker(prefix)
    bloom = types.SimpleNamespace(config=types.SimpleNamespace(model_type="bloom", _attn_implementation="eager"))
    # not a class from transformers.models: remote code
    assert "remote code" in packing_blocker(bloom)
    falcon = tiny()
    falcon.config.model_type = "falcon"
    with caplog.at_level(logging.WARNING):
        assert isinstance(make_batcher(config, falcon, rows(4), 0), PaddedBatcher)
    assert "batching: padded, not packed: the falcon attention is not known to honour packed position ids" in (
        caplog.text
    )


def test_fit_trains_packed_by_default_and_logs_real_tokens(tmp_path):
    data = rows(12, lengths=(3, 20))
    config = TrainConfig(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, tokens_per_batch=60, num_train_epochs=2,
        logging_steps=1, report_to=[], resume="never", learning_rate=1e-2,
    )  # fmt: skip
    tokenizer = types.SimpleNamespace(pad_token_id=0)
    batches = PackedBatcher([len(r["input_ids"]) for r in data], 60, 1024, config.seed, 0)
    steps = len(batches.epoch(0)) + len(batches.epoch(1))
    result = fit(tiny(), tokenizer, data, None, config, show_progress=False)
    assert result.global_step == steps < 12  # packed micro-batches, not 6 padded ones an epoch
    assert result.history[-1]["epoch"] == 2.0
    assert all(np.isfinite(e["loss"]) for e in result.history)
