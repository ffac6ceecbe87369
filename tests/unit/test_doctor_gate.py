"""`tunellm train` runs the doctor's fast checks before any weights load and refuses a run that will certainly
fail, unless forced: a sure out-of-memory and an end-of-turn the model can never generate."""

from __future__ import annotations

import json
import shutil

import pytest

from tunellm.config.load import load_config
from tunellm.doctor import hardware
from tunellm.doctor.estimate import GIB
from tunellm.errors import ConfigError
from tunellm.train import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROWS = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"{2 * i + 1}."} for i in range(8)]


@pytest.fixture
def keys(tiny_llama_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return [f"data.train={data}", f"output_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
            f"model.name_or_path={tiny_llama_dir}", "max_steps=1", "report_to=none"]  # fmt: skip


def no_weights(*args, **kwargs):
    raise AssertionError("the weights must not load before the pre-flight checks refuse")


def small_machine(monkeypatch):
    machine = hardware.Hardware("small test machine", "cpu", 0.05 * GIB, 1e11)
    monkeypatch.setattr(hardware, "detect", lambda: machine)


def test_a_sure_out_of_memory_is_refused_before_the_weights_load(keys, monkeypatch):
    small_machine(monkeypatch)
    monkeypatch.setattr(run, "load_model", no_weights)
    with pytest.raises(ConfigError, match="refusing to train: out of memory") as error:
        run.train_from_config(load_config(None, keys))
    assert "--force" in str(error.value)


def test_force_trains_anyway(keys, monkeypatch, capsys):
    small_machine(monkeypatch)
    result = run.train_from_config(load_config(None, keys), force=True)
    assert result.global_step == 1
    out = capsys.readouterr().out
    assert "doctor: fail: memory.peak: out of memory" in out and "--force given: training anyway" in out


def test_an_end_of_turn_the_model_cannot_generate_is_refused(keys, tiny_llama_dir, tmp_path, monkeypatch):
    """A tokenizer whose EOS was added after the model was built (id 49,152 of 49,152 embeddings)."""
    from transformers import AutoTokenizer

    folder = tmp_path / "added-eos"
    shutil.copytree(tiny_llama_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"eos_token": "<|stop|>"})
    tokenizer.save_pretrained(folder)
    monkeypatch.setattr(run, "load_model", no_weights)
    config = load_config(None, [*keys, f"model.name_or_path={folder}", "data.template=alpaca"])
    with pytest.raises(ConfigError, match="it can never be generated"):
        run.train_from_config(config)


def test_the_checks_cost_little_on_a_run_that_passes(keys, default_tokenizer):
    """What the gate adds to `tunellm train`: it reuses the tokenizer, template and tokenized rows."""
    import time

    from tunellm.data.prepare import choose_template, tokenized_training_set
    from tunellm.doctor.gate import preflight

    config = load_config(None, keys)
    template = choose_template(config.data.train, config.data, default_tokenizer)
    rows = tokenized_training_set(config.data.train, config.data, default_tokenizer, template)
    started = time.perf_counter()
    lines: list[str] = []
    results = preflight(config, default_tokenizer, template, rows, say=lines.append)
    assert time.perf_counter() - started < 2.0
    assert [r.status for r in results] == ["pass", "pass", "pass"]
    assert len(lines) == 1 and lines[0].startswith("doctor: estimated peak") and "s per optimizer step" in lines[0]
