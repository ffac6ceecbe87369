"""The NaN guard: a poisoned row makes its step a no-op, is named by file and line, and a run that stays
poisoned stops with its last good state saved."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loop import TOKENIZER, lora_weights, tiny_lora, toy_rows, train_config

from tunellm.data.record import Source
from tunellm.data.sources import SampleSources
from tunellm.data.tokenize import TokenizedDataset, TokenizeReport
from tunellm.errors import TrainingError
from tunellm.train import fit
from tunellm.train.loop import collate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
POISON = 777  # an input id whose embedding the hook turns into inf


def dataset(rows: list[dict], poisoned: set[int]) -> TokenizedDataset:
    """`rows` as a tokenized set read from data.jsonl (row i at line i + 1); rows in `poisoned` carry POISON."""
    for i, row in enumerate(rows):
        row["input_ids"][row["input_ids"] == POISON] = 1
        if i in poisoned:
            row["input_ids"][1] = POISON
    ids = np.concatenate([r["input_ids"] for r in rows]).astype(np.int32)
    labels = np.concatenate([r["labels"] for r in rows]).astype(np.int32)
    offsets = np.r_[0, np.cumsum([len(r["input_ids"]) for r in rows])].astype(np.int64)
    sources = SampleSources.build([Source("data.jsonl", line=i + 1) for i in range(len(rows))], np.arange(len(rows)))
    return TokenizedDataset(ids, labels, offsets, TokenizeReport(rows=len(rows)), sources)


def poison(model, after_calls: int = 0) -> None:
    """Inject inf into the embeddings of POISON tokens (and, after `after_calls` forwards, of every token)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        bad = inputs[0] == POISON
        if after_calls and calls["n"] > after_calls:
            bad = torch.ones_like(bad)
        return output.masked_fill(bad.unsqueeze(-1), float("inf"))

    model.get_input_embeddings().register_forward_hook(hook)


def test_a_poisoned_step_changes_nothing_and_names_its_rows(tmp_path, caplog):
    from tunellm.train.loop import _optimizer_step
    from tunellm.train.optim import build_scheduler, method_optimizer
    from tunellm.train.strategy import make_strategy

    data = dataset(toy_rows(4), poisoned={2})
    model = tiny_lora()
    poison(model)
    config = train_config(tmp_path, gradient_accumulation_steps=2)
    strategy = make_strategy(config)
    model, optimizer = strategy.prepare(model, lambda bare: method_optimizer(bare, config, None))
    scheduler = build_scheduler(optimizer, config, 10)
    good = [collate([data[0], data[1]], 0), collate([data[3]], 0)]
    assert _optimizer_step(strategy, model, optimizer, scheduler, good, config)[-1] is True
    before = lora_weights(model)
    moments = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    lr_before, schedule_before = optimizer.param_groups[0]["lr"], scheduler.last_epoch
    bad = [collate([data[0]], 0), collate([data[2], data[3]], 0)]  # the poisoned row in the 2nd micro-batch
    loss, _, _, _, stepped = _optimizer_step(strategy, model, optimizer, scheduler, bad, config)
    assert not stepped and not torch.isfinite(loss)
    for name, weight in lora_weights(model).items():
        assert torch.equal(weight, before[name]), name
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(value, moments[key]), key
    assert (scheduler.last_epoch, optimizer.param_groups[0]["lr"]) == (schedule_before, lr_before)
    assert all(p.grad is None for p in model.parameters())


def test_fit_skips_poisoned_steps_names_the_rows_and_trains_on(tmp_path, caplog):
    rows = dataset(toy_rows(8), poisoned={5})
    model = tiny_lora()
    poison(model)
    config = train_config(tmp_path, max_steps=4, gradient_accumulation_steps=2, save_steps=4)
    with caplog.at_level(logging.WARNING, logger="tunellm.train.guard"):
        result = fit(model, TOKENIZER, rows, None, config, show_progress=False)
    skipped = [r.message for r in caplog.records if "step skipped" in r.message]
    print(f"\nNaN guard: {len(skipped)} step(s) skipped over 4 optimizer steps; first: {skipped[0]}")
    assert len(skipped) >= 1  # once per epoch: the window holding row 5
    assert all("data.jsonl:6" in message for message in skipped)  # row 5 is line 6
    assert result.global_step == 4
    assert all(torch.isfinite(w).all() for w in lora_weights(model).values())
    log = (Path(config.output_dir) / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]  # skipped steps are not counted


def test_a_run_that_stays_bad_stops_with_its_last_good_state_saved(tmp_path, caplog):
    rows = dataset(toy_rows(8), poisoned=set())
    model = tiny_lora()
    poison(model, after_calls=4)  # 2 good steps of 2 micro-batches, then every forward is inf
    config = train_config(tmp_path, max_steps=20, gradient_accumulation_steps=2, save_steps=100, max_bad_steps=3)
    with pytest.raises(TrainingError, match="3 optimizer steps in a row had a non-finite") as error:
        fit(model, TOKENIZER, rows, None, config, show_progress=False)
    out = Path(config.output_dir)
    assert error.value.file == str(out / "step-2") and "last good state (step 2)" in error.value.hint
    print(f"\nNaN guard stop: {error.value}")
    from safetensors.torch import load_file

    saved = load_file(out / "step-2" / "adapter_model.safetensors")
    weights = {k.replace(".default", ""): v for k, v in lora_weights(model).items()}
    for name, value in saved.items():
        assert torch.isfinite(value).all() and torch.equal(value, weights[name]), name
    state = json.loads((out / "step-2" / "state" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == 2 and state["batch_in_epoch"] == 2  # past the bad rows
