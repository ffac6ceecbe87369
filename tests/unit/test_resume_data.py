"""Resume checks the training data: other data stops the run, unless told to restart the epoch's order on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_loop import TOKENIZER, tiny_lora, toy_rows, train_config

from tunellm.errors import ConfigError
from tunellm.train import fit
from tunellm.train.state import data_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def saved_state(folder: Path) -> dict:
    return json.loads((folder / "state" / "trainer_state.json").read_text())


def test_resume_onto_changed_data_stops_unless_forced(tmp_path):
    first, other = toy_rows(8), toy_rows(8, seed=5)
    config = train_config(tmp_path, max_steps=2, save_steps=2)
    fit(tiny_lora(), TOKENIZER, first, None, config, show_progress=False)
    out = Path(config.output_dir)
    assert saved_state(out / "step-2")["data_key"] == data_key(first)

    longer = config.model_copy(update={"max_steps": 4, "resume": "auto"})
    with pytest.raises(ConfigError, match="training data changed since .*step-2") as error:
        fit(tiny_lora(), TOKENIZER, other, None, longer, show_progress=False)
    assert "--force" in error.value.hint
    assert not (out / "step-4").exists()

    forced = longer.model_copy(update={"resume_data_changed": "restart_epoch"})
    fit(tiny_lora(), TOKENIZER, other, None, forced, show_progress=False)
    state = saved_state(out / "step-4")
    # 4 micro-batches per epoch: without the restart, step 4 would end epoch 0 (epoch 1, batch 0)
    assert (state["epoch"], state["batch_in_epoch"], state["data_key"]) == (0, 2, data_key(other))


def test_data_key_tells_rows_and_subsets_apart():
    from torch.utils.data import Subset

    rows = toy_rows(6)
    assert data_key(rows) == data_key(toy_rows(6)) != data_key(toy_rows(6, seed=1))
    assert data_key(Subset(rows, [0, 1])) != data_key(Subset(rows, [0, 2]))


def test_data_key_of_a_tokenized_set_is_its_cache_key_or_its_arrays():
    import numpy as np

    from tunellm.data.tokenize import TokenizedDataset, TokenizeReport

    def tokenized(ids):
        ids = np.asarray(ids, np.int32)
        return TokenizedDataset(ids, ids.copy(), np.array([0, 2, len(ids)]), TokenizeReport())

    assert data_key(tokenized([1, 2, 3, 4])) == data_key(tokenized([1, 2, 3, 4])) != data_key(tokenized([1, 2, 3, 5]))
    cached = tokenized([1, 2, 3, 4])
    cached.key = "abc"
    assert data_key(cached) == "abc"
