"""bench/vs_llamafactory.py without running either tool: the splits, both tools' configs, and the scoring."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from tunellm.config.load import load_config

BENCH = Path(__file__).resolve().parents[2] / "bench" / "vs_llamafactory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("vs_llamafactory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    sys.path.insert(0, str(BENCH.parent))  # as when run as a script: its report module sits beside it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH.parent))
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def report(bench):
    """The bench's report module (table and paired sign test), imported by the bench from beside it."""
    return sys.modules["vs_llamafactory_report"]


def ctc_row(i: int, label: str) -> dict:
    choices = ["疾病", "药物", "年龄"]
    return {"input": f"第{i}条\n选项：疾病，药物，年龄\n答：", "target": label, "answer_choices": choices,
            "task_type": "cls", "task_dataset": "CHIP-CTC", "sample_id": f"s{i}"}  # fmt: skip


@pytest.fixture
def data(bench, tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    (folder / "promptcblue" / "aug").mkdir(parents=True)
    rows = [ctc_row(i, ["疾病", "药物", "年龄"][i % 3]) for i in range(20)]
    (folder / bench.CTC).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(bench, "DATA", folder)
    return rows


def tt_row(i: int, target: str) -> dict:
    return {"context": f"Instruction: 第{i}条\nAnswer: ", "target": target}


TRIPLE = '{"predicate": "作者", "object_type": "人物", "subject_type": "图书作品", "object": "甲", "subject": "乙"}'
SPO = f"```json\n[{TRIPLE}]\n```"


@pytest.fixture
def tt_data(bench, tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    (folder / "transformers_tasks").mkdir(parents=True)
    train = [tt_row(i, '["水果"]') for i in range(6)]
    dev = [tt_row(10, '["水果"]'), tt_row(11, '["电脑"]'), tt_row(12, SPO)]
    for name, rows in ((bench.TT_TRAIN, train), (bench.TT_DEV, dev)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(bench, "DATA", folder)
    return train, dev


def test_every_fifth_row_is_held_out_in_both_formats(bench, data, tmp_path):
    train, held = bench.build_split(bench.TASKS["chip_ctc"], tmp_path / "work", quick=False)
    assert [r["sample_id"] for r in held] == ["s4", "s9", "s14", "s19"]
    assert len(train) == 16 and not {r["sample_id"] for r in train} & {r["sample_id"] for r in held}
    alpaca = json.loads((tmp_path / "work" / "lf_heldout.json").read_text(encoding="utf-8"))
    assert alpaca[0] == {"instruction": data[4]["input"], "input": "", "output": data[4]["target"]}
    info = json.loads((tmp_path / "work" / "dataset_info.json").read_text())
    assert info["lf_train"] == {"file_name": "lf_train.json"}


def test_both_configs_carry_the_issue_settings(bench, data, tmp_path):
    folder = tmp_path / "work"
    bench.build_split(bench.TASKS["chip_ctc"], folder, quick=False)
    lf = yaml.safe_load(bench.lf_train_config(folder, "/m", seed=2, steps=60).read_text())
    assert (lf["lora_rank"], lf["lora_alpha"], lf["lora_dropout"], lf["lora_target"]) == (16, 32, 0.05, "all")
    assert (lf["learning_rate"], lf["warmup_ratio"], lf["max_steps"], lf["cutoff_len"]) == (5e-4, 0.05, 60, 512)
    assert (lf["template"], lf["seed"], lf["bf16"], lf["per_device_train_batch_size"]) == ("smollm2", 2, False, 4)
    assert lf["disable_gradient_checkpointing"] is True  # neither tool recomputes activations
    tunellm = bench.tunellm_config(bench.TASKS["chip_ctc"], folder, "/m", seed=2, steps=60)
    config = load_config(tunellm, [])  # tunellm accepts every key
    assert (config.method.r, config.method.lora_alpha, config.method.lora_dropout) == (16, 32, 0.05)
    assert len(config.method.target_modules) == 7 and config.data.cutoff_len == 512
    assert (config.train.max_steps, config.train.seed, config.train.learning_rate) == (60, 2, 5e-4)
    assert (config.train.warmup_ratio, config.train.per_device_train_batch_size, config.generate.max_new_tokens) == (
        0.05,
        4,
        24,
    )


def test_scores_with_tunellm_choice_accuracy(bench, data, tmp_path):
    task = bench.TASKS["chip_ctc"]
    _, held = bench.build_split(task, tmp_path / "work", quick=False)  # references: 药物, 疾病, 年龄, 药物
    scores = bench.score(task, ["药物", "答：疾病。", "I do not know", "疾病"], held)
    assert scores["scored"] == 4
    assert scores["accuracy"] == 0.5  # rows 1 and 2 right; row 3 unread; row 4 wrong
    assert scores["answer_parse_rate"] == 0.75
    assert scores["majority_accuracy"] == 0.5
    assert scores["per_row"] == [1, 1, 0, 0]
    assert scores["per_row_parsed"] == [1, 1, 0, 1]
    with pytest.raises(SystemExit):
        bench.score(task, ["药物"], held)


def test_transformers_tasks_trains_on_its_train_file_and_scores_its_dev_file(bench, tt_data, tmp_path):
    task, folder = bench.TASKS["transformers_tasks"], tmp_path / "work"
    train, held = bench.build_split(task, folder, quick=False)
    assert (train, held) == tt_data
    alpaca = json.loads((folder / "lf_train.json").read_text(encoding="utf-8"))
    assert alpaca[0] == {"instruction": train[0]["context"], "input": "", "output": '["水果"]'}
    config = load_config(bench.tunellm_config(task, folder, "/m", seed=1, steps=60), [])
    assert (config.data.format, config.generate.max_new_tokens) == ("context_target", 160)
    lf = yaml.safe_load(bench.lf_predict_config(task, folder, "/m", 1, folder / "a", folder / "p").read_text())
    assert lf["max_new_tokens"] == 160


def test_transformers_tasks_scores_labels_by_accuracy_and_triples_by_f1(bench, tt_data, tmp_path):
    task = bench.TASKS["transformers_tasks"]
    _, held = bench.build_split(task, tmp_path / "work", quick=False)
    half = SPO.replace("]", ', {"predicate": "作者", "object": "丙", "subject": "乙"}]')  # one right, one wrong
    scores = bench.score(task, ['["水果"]', "电脑吧", half], held)
    assert scores["scored"] == 3
    assert (scores["accuracy"], scores["answer_parse_rate"]) == (0.5, 0.5)  # a bare word is not a label list
    assert (scores["ie_f1"], scores["ie_parse_rate"]) == (pytest.approx(2 / 3, abs=1e-4), 1.0)
    assert scores["per_row"] == [1.0, 0.0, pytest.approx(2 / 3, abs=1e-4)]
    assert scores["per_row_parsed"] == [1.0, 0.0, 1.0]


def test_paired_counts_only_the_rows_the_tools_disagree_on(report):
    results = [
        {"tool": "tunellm", "seed": 1, "per_row": [1, 1, 0, 0, 1]},
        {"tool": "llamafactory", "seed": 1, "per_row": [1, 0, 1, 1, 1]},
        {"tool": "llamafactory adapter, tunellm eval", "seed": 1, "per_row": [0, 0, 0, 0, 0]},
        {"tool": "tunellm", "seed": 2, "per_row": [0, 1, 0.5, 0.25, 0]},  # triple F1 per row: higher wins
        {"tool": "llamafactory", "seed": 2, "per_row": [0, 0, 0.5, 0.75, 0]},
    ]
    lines = report.paired(results)
    assert lines[0].startswith("seed 1: rows better with tunellm 1, with llamafactory 2,")
    assert lines[1].startswith("seed 2: rows better with tunellm 1, with llamafactory 1,")
    assert lines[2].startswith("pooled over seeds: better with tunellm 2, with llamafactory 3,")
    parsed = report.paired(
        [
            {"tool": "tunellm", "seed": 1, "per_row_parsed": [1, 0]},
            {"tool": "llamafactory", "seed": 1, "per_row_parsed": [1, 1]},
        ],
        "per_row_parsed",
        "answers read: ",
    )
    assert parsed == ["answers read: seed 1: rows better with tunellm 0, with llamafactory 1, sign test p = 1.000"]


def test_sign_test_is_the_exact_two_sided_binomial(report):
    assert report.sign_test(0, 0) == 1.0
    assert report.sign_test(5, 5) == 1.0
    assert report.sign_test(10, 3) == pytest.approx(2 * (1 + 13 + 78 + 286) / 2**13)
    assert report.sign_test(0, 8) == pytest.approx(2 / 2**8)


def test_results_log_keeps_runs_that_did_work_and_skips_reused_ones(bench):
    got = [
        {"tool": "tunellm", "train_s": "reused", "gen_s": "reused"},
        {"tool": "tunellm", "train_s": "reused", "gen_s": 300},
        {"tool": "llamafactory", "train_s": 700, "gen_s": "reused"},
        {"tool": "tunellm adapter, llamafactory predict", "gen_s": "reused"},
        {"tool": "llamafactory adapter, tunellm eval", "gen_s": 250},
    ]
    assert [r["tool"] for r in bench.fresh_runs(got)] == [
        "tunellm",
        "llamafactory",
        "llamafactory adapter, tunellm eval",
    ]
