"""Data formats: a contract over every registered format, then each format's own rules."""

import json
from pathlib import Path

import pytest

from tunellm.data.formats import FORMATS, ReadOptions
from tunellm.data.formats.base import fill_placeholders, pending_call_name, rename_columns
from tunellm.data.read import read_conversations
from tunellm.data.record import Source, ToolCall, Turn
from tunellm.errors import DataError

FORMATS_DIR = Path(__file__).resolve().parents[2] / "tunellm" / "data" / "formats"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
NOT_PLUGINS = {"__init__", "base"}

# The roles of each record in <format>/good.jsonl ("call" is an assistant turn that calls tools).
GOOD_ROLES = {
    "alpaca": ["ua", "ua", "uauaua", "ua"],
    "context_target": ["ua", "ua"],
    "promptcblue": ["ua", "ua"],
    "chatglm": ["ua", "uaua", "ua"],
    "sharegpt": ["ua", "uaua", "uCta", "ua", "ua"],
    "openai": ["ua", "uCta", "ua", "uaua"],
    "text": ["a", "a", "a"],
}
# The faults planted in <format>/faults.jsonl: line -> the field the error names (None: the whole record).
FAULTS = {
    "alpaca": {
        2: None, 3: None, 4: "instruction", 5: "output", 6: "input", 7: "history", 8: "history[0]", 11: "output",
    },
    "context_target": {2: None, 3: None, 4: "target", 5: "target", 6: "context", 7: "target"},
    "promptcblue": {2: None, 3: None, 4: "target", 5: "input", 6: "target"},
    "chatglm": {2: None, 3: None, 4: "response", 5: "history", 6: "history[0]", 7: "prompt"},
    "sharegpt": {
        2: None, 3: None, 4: "conversations", 5: "conversations[0].from", 6: "conversations",
        7: "conversations[1].value", 8: "tools", 9: "conversations", 10: "conversations[1]",
        11: "conversations[0].value",
    },
    "openai": {
        2: None, 3: None, 4: "messages", 5: "messages[1].role", 6: "messages",
        7: "messages[1].tool_calls[0]", 8: "messages[0].content", 9: "messages", 10: "tools",
    },
    "text": {2: None, 3: None, 4: "text", 5: "text", 6: "text"},
}  # fmt: skip


def roles(conversation) -> str:
    return "".join("C" if turn.tool_calls else turn.role[0] for turn in conversation.turns)


def test_every_format_module_is_registered_and_has_fixtures():
    modules = {path.stem for path in FORMATS_DIR.glob("*.py")} - NOT_PLUGINS
    unregistered = modules - set(FORMATS.names())
    assert not unregistered, f"import these in tunellm/data/formats/__init__.py: {sorted(unregistered)}"
    assert set(FORMATS.names()) == set(GOOD_ROLES) == set(FAULTS)
    for name in FORMATS.names():
        assert (FIXTURES / name / "good.jsonl").is_file() and (FIXTURES / name / "faults.jsonl").is_file()


@pytest.mark.parametrize("name", FORMATS.names())
def test_examples_are_recognised_and_convert(name):
    fmt = FORMATS.get(name)
    assert fmt.examples and set(fmt.fields)
    for row in fmt.examples:
        first = next(other.name for other in FORMATS if other.sniff(row))
        assert first == name, f"an earlier format ({first}) claims {name}'s example"
        record = fmt.to_record(row, Source("example"), ReadOptions())
        assert record.has_response


@pytest.mark.parametrize("name", FORMATS.names())
def test_good_fixture_is_detected_with_the_right_turns(name):
    path = str(FIXTURES / name / "good.jsonl")
    result = read_conversations([path], ReadOptions())
    assert result.formats == {path: name}
    assert result.total == len(result.conversations) and not result.bad
    assert [roles(c) for c in result.conversations] == GOOD_ROLES[name]
    assert [c.source.line for c in result.conversations] == list(range(1, len(GOOD_ROLES[name]) + 1))


@pytest.mark.parametrize("name", FORMATS.names())
def test_faults_fixture_stops_at_the_first_fault(name):
    path = str(FIXTURES / name / "faults.jsonl")
    with pytest.raises(DataError) as caught:
        read_conversations([path], ReadOptions())
    first_line = min(FAULTS[name])
    assert (caught.value.file, caught.value.line, caught.value.field) == (path, first_line, None)
    assert f"{path}, line {first_line}" in str(caught.value)


@pytest.mark.parametrize("name", FORMATS.names())
def test_faults_fixture_with_skip_bad_lists_every_fault(name):
    path = str(FIXTURES / name / "faults.jsonl")
    result = read_conversations([path], ReadOptions(), skip_bad=True)
    assert result.formats == {path: name}
    assert len(result.conversations) + result.skipped == result.total
    assert {error.line: error.field for error in result.bad} == FAULTS[name]
    assert all(error.file == path and error.expected for error in result.bad)
    assert len(result.conversations) == 2  # the first and the last record are good


@pytest.mark.parametrize("name", FORMATS.names())
def test_columns_map_every_canonical_field(name, tmp_path):
    fmt = FORMATS.get(name)
    row = fmt.examples[-1]
    theirs = {f"my_{key}" if key in fmt.fields else key: value for key, value in row.items()}
    path = tmp_path / "renamed.jsonl"
    path.write_text(json.dumps(theirs, ensure_ascii=False) + "\n", encoding="utf-8")
    columns = {key: f"my_{key}" for key in fmt.fields}
    result = read_conversations([str(path)], ReadOptions(columns=columns))
    assert result.formats == {str(path): name}
    expected = fmt.to_record(row, Source(str(path), line=1), ReadOptions())
    assert result.conversations[0] == expected


def test_alpaca_joins_instruction_and_input_and_keeps_other_fields():
    rows = read_conversations([str(FIXTURES / "alpaca" / "good.jsonl")], ReadOptions()).conversations
    assert rows[0].turns[0].content == "Name a primary colour."
    assert rows[1].turns[0].content == "Translate to French.\nGood morning"
    assert [t.content for t in rows[2].turns] == ["1+1等于几", "2", "2+2呢", "4", "感谢", "不客气。"]
    assert rows[2].system == "你是一个助手。"
    assert rows[3].extra == {"id": 7}


def test_promptcblue_keeps_scoring_fields_in_extra():
    record = read_conversations([str(FIXTURES / "promptcblue" / "good.jsonl")], ReadOptions()).conversations[0]
    assert record.extra == {
        "answer_choices": ["病情诊断", "治疗方案", "非上述类型"],
        "task_type": "cls",
        "task_dataset": "KUAKE-QIC",
        "sample_id": "aug-qic-0",
    }
    assert record.turns[-1] == Turn("assistant", "治疗方案")


def test_prediction_input_ends_at_the_prompt():
    row = {"input": "问题\n答：", "target": "", "sample_id": "test-1"}
    options = ReadOptions(require_response=False)
    record = FORMATS.get("promptcblue").to_record(row, Source("test.json", line=1), options)
    assert [t.role for t in record.turns] == ["user"] and not record.has_response
    with pytest.raises(DataError, match="empty response in training data") as caught:
        FORMATS.get("promptcblue").to_record(row, Source("test.json", line=1), ReadOptions())
    assert caught.value.field == "target"
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}
    assert roles(FORMATS.get("openai").to_record(chat, Source("x"), options)) == "u"


def test_chatglm_columns_are_the_predecessors_prompt_response_history_columns():
    row = {"q": "今天呢", "a": "晴", "h": [["昨天天气", "雨"]]}
    columns = {"prompt": "q", "response": "a", "history": "h"}
    record = FORMATS.get("chatglm").to_record(rename_columns(row, columns), Source("x"), ReadOptions())
    assert [t.content for t in record.turns] == ["昨天天气", "雨", "今天呢", "晴"]


def test_sharegpt_tool_calls_results_and_tools():
    records = read_conversations([str(FIXTURES / "sharegpt" / "good.jsonl")], ReadOptions()).conversations
    assert records[0].system == "You are a calculator." and records[1].system == "Be kind."
    call, result = records[2].turns[1], records[2].turns[2]
    assert call.tool_calls == [ToolCall("get_weather", '{"city": "济南"}')] and call.content == ""
    assert (result.role, result.name, result.content) == ("tool", "get_weather", '{"temperature": 20}')
    assert records[2].tools[0]["type"] == "function" and records[2].tools[0]["function"]["name"] == "get_weather"
    assert records[4].extra == {"source": "demo"}


def test_openai_tool_results_are_named_by_call_id_and_parts_are_joined():
    records = read_conversations([str(FIXTURES / "openai" / "good.jsonl")], ReadOptions()).conversations
    assert records[0].system == "Be brief."
    assert records[1].turns[1].tool_calls == [ToolCall("get_weather", '{"city": "Paris"}')]
    assert records[1].turns[2].name == "get_weather"
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    assert records[1].tools == [{"type": "function", "function": {"name": "get_weather", "parameters": parameters}}]
    assert records[2].turns[0].content == "Two parts"
    assert records[3].extra == {"id": "multi"}


def test_parallel_tool_results_follow_their_calls():
    calls = [ToolCall("a", "{}"), ToolCall("b", "{}")]
    turns = [Turn("user", "x"), Turn("assistant", "", tool_calls=calls)]
    assert pending_call_name(turns) == "a"
    assert pending_call_name([*turns, Turn("tool", "1")]) == "b"
    assert pending_call_name([*turns, Turn("tool", "1"), Turn("tool", "2")]) is None


def test_text_records_take_no_default_system():
    options = ReadOptions(system="You are helpful.")
    result = read_conversations([str(FIXTURES / "text" / "good.jsonl")], options)
    assert all(c.system is None and roles(c) == "a" for c in result.conversations)
    assert result.conversations[1].extra == {"source": "李白"}
    chat = read_conversations([str(FIXTURES / "chatglm" / "good.jsonl")], options).conversations
    assert all(c.system == "You are helpful." for c in chat)


def test_placeholders():
    values = {"name": "Tuney", "author": "the lab"}
    assert fill_placeholders("I am {{name}} by {{ author }}.", values) == "I am Tuney by the lab."
    assert fill_placeholders("{{name}} and {{other}}", values) == "Tuney and {{other}}"
    result = read_conversations([str(FIXTURES / "alpaca" / "good.jsonl")], ReadOptions())
    assert result.conversations[3].turns[-1].content == "I am {{name}}, made by {{author}}."


def test_rename_columns_swaps_and_replaces():
    row = {"instruction": "b", "input": "a", "output": "o", "keep": 1}
    swapped = rename_columns(row, {"instruction": "input", "input": "instruction"})
    assert swapped == {"instruction": "a", "input": "b", "output": "o", "keep": 1}
    assert rename_columns({"output": "old", "answer": "new"}, {"output": "answer"}) == {"output": "new"}
    assert rename_columns(row, {"output": "absent"}) is row


def test_errors_say_what_was_expected():
    alpaca = FORMATS.get("alpaca")
    with pytest.raises(DataError) as caught:
        alpaca.to_record({"instruction": "x", "output": "y", "history": 3}, Source("f.jsonl", 9), ReadOptions())
    assert str(caught.value) == "f.jsonl, line 9, field 'history': is int (expected a list of [user, assistant] pairs)"
    with pytest.raises(DataError) as caught:
        alpaca.to_record({"question": "x"}, Source("f.json", index=4), ReadOptions())
    assert "array index 4, field 'instruction': missing" in str(caught.value)
    assert "columns: {instruction: <name>}" in caught.value.hint


@pytest.mark.parametrize("fmt", ["sharegpt", "openai", "auto"])
def test_a_role_that_is_not_a_string_is_a_data_error(fmt, tmp_path):
    # found by the fuzz test: a list as the role reached a dict lookup and raised TypeError
    row = {"messages": [{"role": [], "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_conversations([str(path)], ReadOptions(), format=fmt)
    assert caught.value.line == 1 and caught.value.field.endswith("messages[0].role")
