"""What `tunellm train` does before the model loads: the dev split, the input checks, the flag shortcuts."""

from __future__ import annotations

import json

import pytest

from tunellm.cli.args import shortcuts
from tunellm.config.load import load_config
from tunellm.errors import ConfigError, DataError
from tunellm.train.run import check_inputs, split_dev


def indices(subset) -> list[int]:
    return [int(row) for row in (subset[i] for i in range(len(subset)))]


def test_dev_split_is_seeded_disjoint_and_whole():
    data = list(range(50))
    train, dev = split_dev(data, 0.2, seed=7)
    assert len(dev) == 10 and len(train) == 40
    assert set(indices(train)).isdisjoint(indices(dev))
    assert sorted(indices(train) + indices(dev)) == data
    assert indices(train) == sorted(indices(train))  # training rows keep their order
    again_train, again_dev = split_dev(data, 0.2, seed=7)
    assert indices(again_dev) == indices(dev) and indices(again_train) == indices(train)
    assert indices(split_dev(data, 0.2, seed=8)[1]) != indices(dev)


def test_dev_split_holds_out_at_least_one_row_and_leaves_at_least_one():
    assert len(split_dev(list(range(5)), 0.01, seed=0)[1]) == 1
    with pytest.raises(DataError, match="leaves no training rows"):
        split_dev([0], 0.5, seed=0)


def test_flags_are_shortcuts_for_keys():
    overrides = shortcuts(data=["data/a*.jsonl", "c:/b.json"], dev=["dev.jsonl"], output="out: 1", model="org/model")
    config = load_config(None, [*overrides, "data.dev=[other.jsonl]"])
    assert config.data.train == ["data/a*.jsonl", "c:/b.json"]
    assert config.data.dev == ["other.jsonl"]  # key=value comes last and wins
    assert config.train.output_dir == "out: 1"
    assert config.model.name_or_path == "org/model"


def test_inputs_are_checked_before_anything_loads(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    check_inputs(load_config(None, [f"data.train={data}", f"output_dir={tmp_path / 'new' / 'run'}"]))
    with pytest.raises(DataError, match="no training data"):
        check_inputs(load_config(None, []))
    with pytest.raises(DataError, match="file not found"):
        check_inputs(load_config(None, [f"data.train={data}", f"data.dev={tmp_path / 'dev.jsonl'}"]))
    with pytest.raises(ConfigError, match="is a file"):
        check_inputs(load_config(None, [f"data.train={data}", f"output_dir={data / 'run'}"]))
    (tmp_path / "old" / "step-5").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        check_inputs(load_config(None, [f"data.train={data}", f"output_dir={tmp_path / 'old'}", "resume=never"]))


def test_a_bad_record_stops_the_run_before_any_weights_load(tmp_path, tiny_llama_dir, monkeypatch):
    from tunellm.train import run

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(run, "load_model", must_not_load)
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": ""}\n')
    keys = [f"data.train={data}", f"model.name_or_path={tiny_llama_dir}", f"output_dir={tmp_path / 'out'}"]
    config = load_config(None, [*keys, f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(DataError, match=r"train.jsonl, line 2, field 'output'"):
        run.train_from_config(config)


def test_dev_split_gives_the_dev_loss_and_the_dev_scorer_the_same_records(tmp_path, default_tokenizer):
    """Records left with no trained token are excluded from the tokenized set; the split must not shift with them."""
    from tunellm.data.prepare import choose_template, read_data, tokenized_training_set
    from tunellm.data.tokenize import TokenizeOptions, encode_conversation
    from tunellm.evaluate.dev_scorer import read_dev_conversations

    data = tmp_path / "train.jsonl"
    long = " ".join(["word"] * 80)  # with cutoff_len 64 its reply is cut off: no trained token, excluded
    rows = [
        {"instruction": (long if i % 3 == 0 else "short") + f" question {i}", "output": f"answer {i}"}
        for i in range(30)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = load_config(
        None,
        [
            f"data.train={data}",
            "data.dev_split=0.3",
            "data.cutoff_len=64",
            "template=alpaca",
            f"cache_dir={tmp_path / 'cache'}",
            "train.seed=3",
        ],
    )
    template = choose_template(config.data.train, config.data, default_tokenizer)
    dataset = tokenized_training_set(config.data.train, config.data, default_tokenizer, template)
    assert dataset.report.fully_masked == 10
    train, dev = split_dev(dataset, config.data.dev_split, config.train.seed)
    scored = read_dev_conversations(config)
    options = TokenizeOptions.from_config(config.data)
    line_of = {}
    for record in read_data(config.data.train, config.data).conversations:
        ids = tuple(encode_conversation(record, default_tokenizer, template, options)["input_ids"].tolist())
        line_of[ids] = record.source.line
    dev_lines = {line_of[tuple(dev[i]["input_ids"].tolist())] for i in range(len(dev))}
    train_lines = {line_of[tuple(train[i]["input_ids"].tolist())] for i in range(len(train))}
    scored_lines = {record.source.line for record in scored}
    assert len(scored) == 9  # 30% of the 30 records, drawn over records
    assert not scored_lines & train_lines  # no scored row was trained on
    assert dev_lines <= scored_lines  # the dev loss covers the scored records that have something to score
    assert len(train_lines) + len(dev_lines) == 20
