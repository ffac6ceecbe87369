"""`train.best_metric` picks the step whose evaluation was best, for either direction of the metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_loop import TOKENIZER, tiny_lora, toy_rows, train_config

from tunellm.train import fit
from tunellm.train import loop as loop_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scripted(values: list[float]):
    """A callable returning the next of `values` at each call (one per evaluation)."""
    pending = list(values)
    return lambda *args, **kwargs: pending.pop(0)


def best_of(tmp_path: Path, metric: str):
    return train_config(tmp_path, max_steps=8, eval_steps=2, save_steps=100, best_metric=metric, save_total_limit=2)


def test_higher_is_better_picks_the_highest_step(tmp_path, monkeypatch):
    accuracy = scripted([0.3, 0.9, 0.5, 0.7])  # evaluations at steps 2, 4, 6, 8: step 4 is best
    config = best_of(tmp_path, "accuracy")
    result = fit(
        tiny_lora(),
        TOKENIZER,
        toy_rows(4),
        toy_rows(2),
        config,
        show_progress=False,
        dev_scorer=lambda model: {"accuracy": accuracy()},
    )
    best = json.loads((Path(config.output_dir) / "best.json").read_text())
    assert best == {"step": 4, "checkpoint": "step-4", "metric": "accuracy", "value": 0.9, "greater_is_better": True}
    assert result.best_checkpoint == Path(config.output_dir) / "step-4"
    assert (Path(config.output_dir) / "step-4").is_dir()


def test_lower_is_better_picks_the_lowest_step(tmp_path, monkeypatch):
    losses = scripted([0.9, 0.6, 0.2, 0.4])  # evaluations at steps 2, 4, 6, 8: step 6 is best
    monkeypatch.setattr(loop_module, "evaluate", lambda *args, **kwargs: {"eval_loss": losses()})
    config = best_of(tmp_path, "eval_loss")
    result = fit(tiny_lora(), TOKENIZER, toy_rows(4), toy_rows(2), config, show_progress=False)
    best = json.loads((Path(config.output_dir) / "best.json").read_text())
    assert best["step"] == 6 and best["checkpoint"] == "step-6" and best["value"] == 0.2
    assert best["greater_is_better"] is False
    assert result.best_checkpoint == Path(config.output_dir) / "step-6"
    assert (Path(config.output_dir) / "step-6").is_dir()
