"""Task metrics against hand-computed values, Chinese included, and the task detection that picks them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tunellm.config.schema import DataConfig, RunConfig, TrainConfig
from tunellm.errors import ConfigError
from tunellm.evaluate.dev_scorer import check_best_metric, dev_scorer_for, read_dev_conversations
from tunellm.evaluate.metrics import METRICS, higher_is_better, score_rows
from tunellm.evaluate.metrics.bleu import sentence_bleu
from tunellm.evaluate.metrics.choice_accuracy import read_choice, read_label
from tunellm.evaluate.metrics.rouge import rouge_scores, words
from tunellm.evaluate.run import pick_rows
from tunellm.evaluate.tasks import EvalRow, detect_kinds, group_of, normalize, parse_json_list
from tunellm.train.loop import greater_is_better

METRICS_DIR = Path(__file__).resolve().parents[2] / "tunellm" / "evaluate" / "metrics"


def score(metric: str, rows: list[EvalRow]) -> dict[str, float]:
    return METRICS.get(metric).score([r.output for r in rows], [r.reference or "" for r in rows], rows)


def spo(subject: str, predicate: str, obj: str, **more: str) -> str:
    return (
        f'{{"predicate": "{predicate}", "object_type": "{more.get("object_type", "人物")}", '
        f'"subject_type": "影视作品", "object": "{obj}", "subject": "{subject}"}}'
    )


# ---- reading answers ----


def test_normalize_drops_punctuation_and_whitespace_and_unifies_widths():
    assert normalize(" （症状）患者 感受。\n") == normalize("(症状)患者感受") == "症状患者感受"
    assert normalize("ＡＢＣ") == "abc"


def test_a_choice_is_read_from_the_whole_output_or_the_one_label_it_contains():
    labels = ["相关", "不相关", "非上述类型"]
    assert read_choice("不相关", labels) == "不相关"
    assert read_choice("答：相关。", labels) == "相关"
    assert read_choice("我觉得不相关吧", labels) == "不相关"  # 相关 inside 不相关 does not count
    assert read_choice("相关，不相关", labels) is None  # two answers is no answer
    assert read_choice("无关", labels) is None
    assert read_choice("非上述类型。", labels) == "非上述类型"


def test_a_label_is_read_from_a_one_string_json_list_fenced_or_not():
    assert read_label('["水果"]') == ("水果", True)
    assert read_label('```json\n["水果"]\n```') == ("水果", True)
    assert read_label("答案是 ['水果'] 。") == ("水果", True)
    assert read_label("水果") == ("水果", False)
    assert read_label('["水果", "书籍"]') == ('["水果", "书籍"]', False)


def test_accuracy_by_hand_with_none_of_the_above_and_labels():
    choices = {"answer_choices": ["性别", "疾病"], "task_dataset": "CHIP-CTC"}
    rows = [
        EvalRow("疾病。", "疾病", choices, "choice"),  # right, punctuation ignored
        EvalRow("非上述类型", "非上述类型", choices, "choice"),  # right: the data's own none label
        EvalRow("性别，疾病", "疾病", choices, "choice"),  # two answers: wrong, unread
        EvalRow("年龄", "年龄", choices, "choice"),  # a noisy reference outside the choices, matched: right
        EvalRow('["水果"]', '["水果"]', {}, "label"),  # right, read
        EvalRow("水果", '["水果"]', {}, "label"),  # right, not in the asked form
        EvalRow('["书籍"]', '["水果"]', {}, "label"),  # wrong, read
    ]
    result = score("choice_accuracy", rows)
    assert result == {
        "accuracy": 5 / 7,
        "majority_accuracy": 3 / 7,  # always 水果
        "random_accuracy": (1 / 2 + 0 + 1 / 2 + 0) / 4,  # 非上述类型 and 年龄 are not among the listed choices
        "beats_majority": 1.0,
        "macro_f1": pytest.approx((2 / 3 + 1 + 1 + 4 / 5 + 0) / 5),  # 疾病 非上述类型 年龄 水果 书籍(never right)
        "answer_parse_rate": 5 / 7,
    }
    assert list(result) == list(METRICS.get("choice_accuracy").keys)


def test_a_model_answering_the_prior_does_not_beat_the_majority_baseline():
    """Per task the most frequent label: CHIP-CTC-like rows answered with the frequent label, and a second task."""
    ctc = {"answer_choices": ["疾病", "症状(患者感受)", "年龄"], "task_dataset": "CHIP-CTC"}
    rows = [EvalRow("疾病", ref, ctc, "choice", "CHIP-CTC") for ref in ("疾病", "疾病", "疾病", "年龄")]
    yes_no = {"answer_choices": ["yes", "no"]}
    rows += [EvalRow("no", ref, yes_no, "choice", "STS") for ref in ("yes", "no")]
    result = score("choice_accuracy", rows)
    assert result["accuracy"] == 4 / 6 and result["majority_accuracy"] == (3 + 1) / 6  # 疾病 x3, then yes or no
    assert result["beats_majority"] == 0.0
    assert result["random_accuracy"] == pytest.approx((4 * (1 / 3) + 2 * (1 / 2)) / 6)
    # 疾病: tp 3, fp 1; 年龄: fn 1; no: tp 1, fp 1; yes: fn 1
    assert result["macro_f1"] == pytest.approx((6 / 7 + 0 + 2 / 3 + 0) / 4)
    one_task = score("choice_accuracy", rows[:4])
    assert one_task["accuracy"] == one_task["majority_accuracy"] == 3 / 4 and one_task["beats_majority"] == 0.0


# ---- information extraction ----


def test_parse_json_list_fenced_with_text_around_and_python_quotes():
    assert parse_json_list('```json\n[{"a": 1}]\n```').items == [{"a": 1}]
    found = parse_json_list('答案如下：[{"a": 1}, {"a": 2}] 以上。')
    assert found.items == [{"a": 1}, {"a": 2}] and found.complete and not found.fenced
    assert parse_json_list("[{'a': '北京'}]").items == [{"a": "北京"}]
    assert parse_json_list("```json\n[]\n```", strict=True).complete


def test_a_broken_list_yields_its_complete_objects_and_is_not_parsed():
    cut = '```json\n[{"a": 1}, {"a": 2}, {"a": "导'
    assert (parse_json_list(cut).items, parse_json_list(cut).complete) == ([{"a": 1}, {"a": 2}], False)
    missing_comma = parse_json_list('[{"a": 1} {"a": 2}]')
    assert (missing_comma.items, missing_comma.complete) == ([{"a": 1}, {"a": 2}], False)
    assert parse_json_list("我不知道").items == [] and not parse_json_list("我不知道").complete
    assert not parse_json_list("extra [1, 2] text", strict=True).complete  # references must be the list alone


def test_ie_f1_by_hand_with_malformed_outputs():
    a, b, c = spo("喜剧之王", "主演", "周星驰"), spo("喜剧之王", "导演", "李力持"), spo("喜剧之王", "编剧", "周星驰")
    d, f, g = spo("花样男子", "编剧", "神尾叶子"), spo("古刹钟声", "导演", "朱文顺"), spo("古刹钟声", "主演", "浦克")
    e = spo("Ｅ片", "主演", "Tom")
    fence = "```json\n[{}]\n```".format
    rows = [
        # right A (types differ: not part of a triple), wrong C, missed B; A repeated counts once
        EvalRow(f"结果：[{a.replace('人物', '演员')}, {c}, {a}]。", fence(f"{a}, {b}")),
        EvalRow(f'```json\n[{d}, {{"predicate": "编', fence(d)),  # cut off: D salvaged, not parsed
        EvalRow('[{"head": "花样男子", "relation": "编剧", "tail": "神尾叶子"}]', fence(d)),  # wrong keys
        EvalRow("我不知道", fence(f"{f}, {g}")),  # nothing parses: both missed
        EvalRow(f"[{spo('e片', '主演', 'tom')}]", fence(e)),  # NFKC and case-folding: a match
    ]
    for row in rows:
        row.kind = "extraction"
    result = score("ie_f1", rows)
    tp, fp, fn = 3, 2, 4
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert result["ie_precision"] == pytest.approx(precision)
    assert result["ie_recall"] == pytest.approx(recall)
    assert result["ie_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert result["ie_parse_rate"] == pytest.approx(3 / 5)


def test_ie_f1_with_nothing_to_find_and_nothing_found_is_perfect():
    row = EvalRow("[]", "```json\n[]\n```", kind="extraction")
    assert score("ie_f1", [row])["ie_f1"] == 1.0


# ---- free text ----


def test_bleu4_by_hand_with_nist_smoothing():
    # p1 4/5, p2 2/4, p3 1/3, p4 0/2 -> 1/(2*2); brevity penalty exp(1 - 6/5)
    assert sentence_bleu(list("猫坐在垫子上"), list("猫坐在地上")) == pytest.approx(math.exp(-0.2) * (1 / 30) ** 0.25)
    # shorter than 4: p3 0/1 -> 1/2, p4 0/1 -> 1/4; brevity penalty exp(1 - 6/2)
    assert sentence_bleu(list("猫坐在垫子上"), list("猫坐")) == pytest.approx(math.exp(-2) * 0.125**0.25)
    assert sentence_bleu(list("猫坐在垫子上"), list("猫坐在垫子上")) == pytest.approx(1.0)
    assert sentence_bleu(list("猫坐在垫子上"), list("狗")) == 0.0
    assert sentence_bleu(list("猫坐在垫子上"), []) == 0.0


def test_rouge_by_hand_counts_distinct_ngrams_and_the_lcs():
    r1, r2, rl = rouge_scores(["a", "b", "c", "a"], ["a", "b", "d"])
    assert r1 == pytest.approx(2 / 3)  # {a,b,c} vs {a,b,d}
    assert r2 == pytest.approx(0.4)  # {ab,bc,ca} vs {ab,bd}: P 1/3, R 1/2
    assert rl == pytest.approx(4 / 7)  # LCS 2: P 2/4, R 2/3
    assert rouge_scores([], ["a"]) == (0.0, 0.0, 0.0)


def test_rouge_segments_chinese_with_jieba_and_bleu_uses_characters():
    assert words("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    rows = [EvalRow("我爱北京", "我爱北京天安门", kind="text")]
    result = score("rouge", rows)
    assert result["rouge1"] == pytest.approx(6 / 7)  # P 3/3, R 3/4
    assert result["rouge2"] == pytest.approx(0.8)  # P 2/2, R 2/3
    assert result["rougeL"] == pytest.approx(6 / 7)
    assert score("bleu", rows)["bleu4"] == pytest.approx(math.exp(1 - 7 / 4))  # every n-gram matches; BP only


def test_exact_match_strips_surrounding_whitespace_only():
    rows = [EvalRow(" 水果\n", "水果", kind="text"), EvalRow("水果。", "水果", kind="text")]
    assert score("exact_match", rows) == {"exact_match": 0.5}


def test_loss_is_the_mean_over_tokens_not_rows():
    rows = [EvalRow("", "x", loss_sum=3.0, tokens=3), EvalRow("", "y", loss_sum=5.0, tokens=1)]
    assert score("perplexity", rows) == {"loss": 2.0, "ppl": pytest.approx(math.exp(2.0))}


# ---- which rows are which task ----


def test_task_kinds_come_from_the_data():
    ie = '```json\n[{"predicate": "主演", "object": "a", "subject": "b"}]\n```'
    cbl = {"answer_choices": ["是的", "不是"], "task_dataset": "CHIP-STS"}
    cdn = {"answer_choices": ["贲门溃疡", "肾钙化"], "task_dataset": "CHIP-CDN"}
    references = [ie, '["水果"]', "一段话", None, "不是", "是的", "是"]
    references += ["没有对应的标准化实体", "肾钙化，贲门溃疡", "咳嗽"]
    extras = [{}, {}, {}, {}, cbl, cbl, cbl, cdn, cdn, cdn]
    assert detect_kinds(references, extras) == [
        "extraction",
        "label",
        "text",
        "none",
        "choice",
        "choice",
        "choice",  # a noisy label in a choice task is still scored as a choice (and will be wrong)
        "text",  # one none-label reference does not make CHIP-CDN a choice task
        "text",
        "text",
    ]


def test_rows_group_by_task_then_kind_or_a_chosen_field():
    assert group_of("choice", {"task_dataset": "KUAKE-QIC", "task_type": "cls"}, "auto") == "KUAKE-QIC"
    assert group_of("label", {}, "auto") == "classification"
    assert group_of("extraction", {}, "auto") == "extraction"
    assert group_of("text", {"category": "写作"}, "category") == "写作"
    assert group_of("text", {"task_dataset": "x"}, "none") == "all"


def test_max_rows_spreads_over_the_file():
    assert pick_rows(list(range(10)), 4) == [0, 2, 5, 7]
    assert pick_rows(list(range(3)), 4) == [0, 1, 2]


def test_score_rows_counts_the_rows_behind_each_metric():
    rows = [
        EvalRow('["水果"]', '["水果"]', kind="label", loss_sum=1.0, tokens=2),
        EvalRow("abc", "abd", kind="text"),
        EvalRow("x", None, kind="none"),
    ]
    result = score_rows(rows)
    assert result["rows"] == 3
    assert result["scored"] == {"perplexity": 1, "exact_match": 2, "choice_accuracy": 1, "bleu": 1, "rouge": 1}
    assert result["accuracy"] == 1.0 and result["exact_match"] == 0.5 and "ie_f1" not in result


# ---- registry and direction ----


def test_every_metric_file_is_registered():
    files = {p.stem for p in METRICS_DIR.glob("*.py")} - {"__init__", "base"}
    assert {type(metric).__module__.rsplit(".", 1)[1] for metric in METRICS} == files


def test_direction_comes_from_the_metric():
    assert not higher_is_better("eval_loss") and not higher_is_better("ppl")
    assert higher_is_better("ie_f1") and higher_is_better("accuracy") and higher_is_better("rougeL")
    with pytest.raises(ConfigError, match="did you mean 'accuracy'"):
        higher_is_better("acuracy")


def test_greater_is_better_follows_best_metric_unless_set():
    assert greater_is_better(TrainConfig(best_metric="ie_f1")) is True
    assert greater_is_better(TrainConfig()) is False
    assert greater_is_better(TrainConfig(best_metric="ie_f1", greater_is_better=False)) is False


def test_best_metric_is_checked_before_training():
    check_best_metric(RunConfig(train=TrainConfig(best_metric="rougeL")))
    with pytest.raises(ConfigError, match="eval_loss"):
        check_best_metric(RunConfig(train=TrainConfig(best_metric="ppl")))
    with pytest.raises(ConfigError, match="unknown metric"):
        check_best_metric(RunConfig(train=TrainConfig(best_metric="f1")))


def test_dev_scorer_for_reads_the_dev_set_only_when_a_task_metric_is_wanted(tmp_path):
    missing = RunConfig(data=DataConfig(dev=[str(tmp_path / "missing.jsonl")]))
    assert dev_scorer_for(missing, None, None) is None  # eval_loss: nothing read, so no error for the missing file
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(f'{{"context": "q{i}", "target": "[\\"水果\\"]"}}\n' for i in range(10)), encoding="utf-8")
    wanted = RunConfig(data=DataConfig(dev=[str(dev)]), train=TrainConfig(best_metric="accuracy"))
    assert callable(dev_scorer_for(wanted, None, None))
    split = RunConfig(data=DataConfig(train=[str(dev)], dev_split=0.3))
    held = read_dev_conversations(split)
    assert len(held) == 3 and held == read_dev_conversations(split)
    with pytest.raises(ConfigError, match="needs dev records"):
        dev_scorer_for(RunConfig(train=TrainConfig(best_metric="accuracy")), None, None)


def test_the_report_shows_the_baselines_and_flags_a_model_that_does_not_beat_the_majority():
    from tunellm.evaluate.report import markdown_report
    from tunellm.evaluate.run import EvalResult, summarize

    ctc = {"answer_choices": ["疾病", "年龄"], "task_dataset": "CHIP-CTC"}
    rows = [EvalRow("疾病", ref, ctc, "choice", "CHIP-CTC") for ref in ("疾病", "疾病", "年龄")]
    rows += [EvalRow(answer, answer, {"answer_choices": ["yes", "no"]}, "choice", "STS") for answer in ("yes", "no")]
    overall, groups = summarize(rows)
    report = markdown_report([EvalResult("step-9", "tiny", overall, groups)])
    assert "| task | rows | exact_match | accuracy | majority_accuracy | random_accuracy | beats_majority |" in report
    assert "| CHIP-CTC | 3 | 0.6667 | 0.6667 | 0.6667 | 0.5000 | 0.0000 | 0.4000 | 1.0000 |" in report
    flags = [line for line in report.splitlines() if "does not beat" in line]
    assert len(flags) == 1 and "step-9, CHIP-CTC: accuracy 0.6667" in flags[0] and "(0.6667, uniform random" in flags[0]
