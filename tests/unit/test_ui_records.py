"""Label forms and export: an unedited record round-trips exactly; exports read back as the same conversations;
file pickers refuse paths outside the root."""

import json
from pathlib import Path

import pytest

from tunellm.data.formats import ReadOptions
from tunellm.data.read import read_conversations
from tunellm.errors import ConfigError, DataError
from tunellm.ui.paths import data_files, inside
from tunellm.ui.records import BLANK, Form, export_rows, form_from_row, row_from_form, visible
from tunellm.ui.store import LabelStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
FORMAT_FILES = sorted(FIXTURES.glob("*/good.jsonl"))
SAMPLE = Path(__file__).resolve().parents[2] / "tunellm" / "samples" / "identity_train.json"


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_source(conversations):
    return [(c.system, c.turns, c.tools, c.extra) for c in conversations]


@pytest.mark.parametrize("path", FORMAT_FILES, ids=lambda p: p.parent.name)
def test_an_unedited_form_gives_back_the_same_row(path):
    fmt = path.parent.name
    for row in rows_of(path):
        assert row_from_form(fmt, row, form_from_row(fmt, row)) == row


@pytest.mark.parametrize("path", [*FORMAT_FILES, SAMPLE], ids=lambda p: p.parent.name)
@pytest.mark.parametrize("export_as", ["same", "openai"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json.gz"])
def test_exporting_an_unedited_file_reads_back_as_the_same_conversations(path, export_as, suffix, tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    dataset = store.open_file(path)
    out = tmp_path / f"out{suffix}"
    assert export_rows(list(store.rows(dataset.id)), dataset.format, out, export_as) > 0
    original = read_conversations([str(path)], ReadOptions())
    again = read_conversations([str(out)], ReadOptions())
    assert without_source(again.conversations) == without_source(original.conversations)
    if export_as == "same":
        assert again.formats[str(out)] == original.formats[str(path)]


def test_alpaca_form_edits_the_fields_it_shows():
    row = {"instruction": "q", "input": "", "output": "a", "id": 7}
    form = form_from_row("alpaca", row)
    assert (form.prompt, form.query, form.response, json.loads(form.extra)) == ("q", "", "a", {"id": 7})
    form.query, form.response = "ctx", "better"
    assert row_from_form("alpaca", row, form) == {"instruction": "q", "input": "ctx", "output": "better", "id": 7}
    assert visible("alpaca", form)["query"] and not visible("alpaca", form)["label"]


def test_class_label_and_extraction_triples_write_the_target():
    label_row = {"context": "Which fruit?\nAnswer: ", "target": '["水果"]'}
    form = form_from_row("context_target", label_row)
    assert form.label == "水果" and visible("context_target", form)["label"]
    form.label = "衣服"
    assert row_from_form("context_target", label_row, form)["target"] == '["衣服"]'

    triple = {
        "predicate": "主演",
        "object_type": "人物",
        "subject_type": "影视作品",
        "object": "周星驰",
        "subject": "喜剧之王",
    }
    ie_row = {"context": "句子…", "target": "```json\n" + json.dumps([triple], ensure_ascii=False) + "\n```"}
    form = form_from_row("context_target", ie_row)
    assert (
        form.triples == [["喜剧之王", "主演", "周星驰", "影视作品", "人物"]]
        and visible("context_target", form)["triples"]
    )
    form.triples = [*form.triples, ["功夫", "导演", "周星驰", "影视作品", "人物"]]
    target = row_from_form("context_target", ie_row, form)["target"]
    written = json.loads(target.removeprefix("```json\n").removesuffix("\n```"))
    assert written[1] == {
        "subject": "功夫", "predicate": "导演", "object": "周星驰", "subject_type": "影视作品", "object_type": "人物"
    }  # fmt: skip


def test_promptcblue_choices_and_multi_turn_json():
    row = {"input": "选？\n答：", "target": "是的", "answer_choices": ["是的", "不是"], "task_type": "cls"}
    form = form_from_row("promptcblue", row)
    assert form.choices == "是的\n不是"
    form.choices = "是的\n不是\n不同"
    assert row_from_form("promptcblue", row, form)["answer_choices"] == ["是的", "不是", "不同"]
    chat = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    form = form_from_row("sharegpt", chat)
    assert visible("sharegpt", form)["turns"]
    form.turns = json.dumps(chat["conversations"] + [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}])
    assert len(row_from_form("sharegpt", chat, form)["conversations"]) == 4
    form.turns = "[not json"
    with pytest.raises(DataError, match="not valid JSON"):
        row_from_form("sharegpt", chat, form)


def test_a_blank_record_of_each_format_fills_in_from_its_form(tmp_path):
    for fmt, blank in BLANK.items():
        form = form_from_row(fmt, blank)
        assert isinstance(form, Form)
    row = row_from_form("alpaca", BLANK["alpaca"], Form(prompt="new q", response="new a"))
    assert export_rows([row], "alpaca", tmp_path / "new.jsonl") == 1


def test_export_names_a_bad_record_and_writes_nothing(tmp_path):
    rows = [{"instruction": "q", "input": "", "output": "a"}, {"instruction": "q2", "input": "", "output": ""}]
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match="record 2"):
        export_rows(rows, "alpaca", out)
    assert not out.exists()
    with pytest.raises(DataError, match=".json or .jsonl"):
        export_rows(rows[:1], "alpaca", tmp_path / "out.csv")


def test_paths_outside_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.jsonl").write_text("{}\n")
    (root / ".venv").mkdir()
    (root / ".venv" / "x.json").write_text("[]")
    (tmp_path / "secret.json").write_text("[]")
    (root / "link.json").symlink_to(tmp_path / "secret.json")
    assert inside(root, "data/a.jsonl") == (root / "data" / "a.jsonl").resolve()
    assert inside(root, str(root / "data")) == (root / "data").resolve()
    for escape in (
        "../secret.json",
        "data/../../secret.json",
        str(tmp_path / "secret.json"),
        "/etc/passwd",
        "link.json",
    ):
        with pytest.raises(ConfigError, match="outside"):
            inside(root, escape)
    assert data_files(root) == ["data/a.jsonl"]  # not .venv, nor the link leading out
