"""Chat templates: every one registered, training and generation renders agree token for token,
the HF-compatible ones equal `apply_chat_template`, and each writes its published format."""

import ast
import copy
from pathlib import Path

import jinja2
import numpy as np
import pytest

from tunellm.data.record import Conversation, Source, ToolCall, Turn
from tunellm.data.templates import TEMPLATES, get_template
from tunellm.data.tokenize import encode_conversation
from tunellm.errors import DataError, TunellmError

FOLDER = Path(__file__).resolve().parents[2] / "tunellm" / "data" / "templates"
SOURCE = Source("chats.jsonl", line=7)


def conversation(*texts: str, system: str | None = None, tools=None) -> Conversation:
    roles = ["user", "assistant"]
    return Conversation([Turn(roles[i % 2], t) for i, t in enumerate(texts)], SOURCE, system=system, tools=tools)


TOOL_CHAT = Conversation(
    [
        Turn("user", "Weather in Paris?"),
        Turn("assistant", "", tool_calls=[ToolCall("weather", '{"city": "Paris"}')]),
        Turn("tool", '{"temp": 21}', name="weather"),
        Turn("assistant", "It is 21 degrees."),
    ],
    SOURCE,
    system="You help.",
    tools=[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
)
CHATS = {
    "single": conversation("What is 2+2?", "4"),
    "single_system": conversation("What is 2+2?", "4", system="Answer briefly."),
    "multi_system": conversation("Hi!", "Hello, how can I help?", "Name a colour.", "Blue.", system="Be kind."),
    "tools": TOOL_CHAT,
}


def test_every_template_module_is_registered_by_one_import_line():
    modules = {p.stem for p in FOLDER.glob("*.py")} - {"__init__", "base", "jinja", "tools"}  # the shared parts
    assert modules == set(TEMPLATES.names())
    tree = ast.parse((FOLDER / "__init__.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert modules <= imported


def trained_runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of trained positions."""
    flags = np.concatenate([[False], labels != -100, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(flags))
    return list(zip(edges[::2], edges[1::2], strict=True))


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("name", TEMPLATES.names())
def test_training_prompt_equals_generation_prompt(default_tokenizer, name, chat):
    template = get_template(name, default_tokenizer)
    full = CHATS[chat]
    sample = encode_conversation(full, default_tokenizer, template)
    runs = trained_runs(sample["labels"])
    replies = [k for k, turn in enumerate(full.turns) if turn.role == "assistant"]
    assert len(runs) == len(replies)
    for (start, _), k in zip(runs, replies, strict=True):
        prompt = Conversation(full.turns[:k], full.source, system=full.system, tools=full.tools)
        generation = encode_conversation(prompt, default_tokenizer, template, for_generation=True)
        assert generation["input_ids"].tolist() == sample["input_ids"][:start].tolist()
        assert (generation["labels"] == -100).all()


@pytest.mark.parametrize("name", TEMPLATES.names())
def test_every_reply_ends_with_the_end_of_turn(default_tokenizer, name):
    template = get_template(name, default_tokenizer)
    sample = encode_conversation(CHATS["multi_system"], default_tokenizer, template)
    eos = default_tokenizer.eos_token_id  # <|im_end|>: also ChatML's end of turn
    assert [sample["labels"][stop - 1] for _, stop in trained_runs(sample["labels"])] == [eos, eos]
    assert set(template.stop_strings) >= {default_tokenizer.eos_token}


@pytest.mark.parametrize("name", TEMPLATES.names())
def test_generation_needs_a_last_user_turn(default_tokenizer, name):
    template = get_template(name, default_tokenizer)
    with pytest.raises(DataError, match="must end with a user or tool turn") as error:
        template.render(CHATS["single"], for_generation=True)
    assert "chats.jsonl, line 7" in str(error.value)
    segments = template.render(conversation("Hi"), for_generation=True)
    assert segments and not segments[-1].trainable


def hf_messages(chat: Conversation) -> list[dict]:
    messages = [] if chat.system is None else [{"role": "system", "content": chat.system}]
    return messages + [{"role": t.role, "content": t.content} for t in chat.turns]


@pytest.mark.parametrize(
    ("name", "chat"),
    [("hf_chat", "single"), ("hf_chat", "single_system"), ("hf_chat", "multi_system")]
    + [("chatml", "single_system"), ("chatml", "multi_system")],  # SmolLM adds a default system line; chatml has none
)
def test_equals_apply_chat_template(default_tokenizer, name, chat):
    full = CHATS[chat]
    template = get_template(name, default_tokenizer)
    prompt = Conversation(full.turns[:-1], full.source, system=full.system)
    for case, generation in ((full, False), (prompt, True)):
        messages = hf_messages(case)
        text = default_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        assert "".join(s.text for s in template.render(case, generation)) == text
        ids = default_tokenizer.apply_chat_template(messages, add_generation_prompt=generation)["input_ids"]
        assert encode_conversation(case, default_tokenizer, template, for_generation=generation)[
            "input_ids"
        ].tolist() == list(ids)


# Qwen2.5-Instruct's chat template (tokenizer_config.json), transcribed: native tools and tool calls.
QWEN25 = """{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}\
{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\
{%- endif %}{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}{%- for tool in tools %}\
{{- "\\n" }}{{- tool | tojson }}{%- endfor %}{{- "\\n</tools>\\n\\nFor each function call, return a json object with \
function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}{%- else %}\
{%- if messages[0]['role'] == 'system' %}\
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are \
Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}\
{%- for message in messages %}{%- if (message.role == "user") or (message.role == "system" and not loop.first) or \
(message.role == "assistant" and not message.tool_calls) %}{{- '<|im_start|>' + message.role + '\\n' + message.content \
+ '<|im_end|>' + '\\n' }}{%- elif message.role == "assistant" %}{{- '<|im_start|>' + message.role }}\
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}{%- for tool_call in message.tool_calls %}\
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}\
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}\
{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}{%- elif message.role == "tool" %}\
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}\
{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}\
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}\
{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""


CALL = {"name": "weather", "arguments": {"city": "Paris"}}


def test_chatml_tools_match_qwen_and_hf_chat_uses_native_tool_calls(default_tokenizer):
    qwen = copy.copy(default_tokenizer)
    qwen.chat_template = QWEN25
    messages = [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": CALL}]},
        {"role": "tool", "content": '{"temp": 21}', "name": "weather"},
        {"role": "assistant", "content": "It is 21 degrees."},
    ]  # fmt: skip
    expected = qwen.apply_chat_template(messages, tools=TOOL_CHAT.tools, tokenize=False)
    for template in (get_template("chatml", qwen), get_template("hf_chat", qwen)):
        segments = template.render(TOOL_CHAT, for_generation=False)
        assert "".join(s.text for s in segments) == expected
        trained = [s.text for s in segments if s.trainable]
        assert trained == [
            '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
            "It is 21 degrees.<|im_end|>",
        ]


def test_hf_chat_without_tool_support_writes_tools_as_text(default_tokenizer):
    text = "".join(s.text for s in get_template("hf_chat", default_tokenizer).render(TOOL_CHAT, False))
    assert "You help.\n\n# Tools" in text and '"name": "weather"' in text
    assert '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in text
    assert '<|im_start|>tool\n{"temp": 21}<|im_end|>' in text


class JinjaTokenizer:
    """Just enough of a tokenizer for hf_chat: a Jinja chat template and the special tokens."""

    bos_token, eos_token = "<s>", "</s>"

    def __init__(self, chat_template: str) -> None:
        self.chat_template = chat_template

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=False):
        return jinja2.Template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt
        )


def test_hf_chat_rejects_a_template_that_is_not_prefix_consistent():
    rewrites_history = (
        "{% for m in messages %}{% if loop.last %}>> {% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(TunellmError, match="not prefix-consistent"):
        get_template("hf_chat", JinjaTokenizer(rewrites_history))


def test_hf_chat_without_an_end_of_turn_marker_adds_eos():
    plain = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    template = get_template("hf_chat", JinjaTokenizer(plain))
    segments = template.render(conversation("Hi", "Yo", "Bye", "Ciao"), for_generation=False)
    assert [s.text for s in segments if s.trainable] == ["Yo</s>", "Ciao</s>"]
    assert "".join(s.text for s in segments) == "user: Hi\nassistant: Yo</s>\nuser: Bye\nassistant: Ciao</s>\n"


class TextTokenizer:
    """A stand-in with a Llama-like BOS/EOS and an optional vocabulary of marker tokens."""

    bos_token, eos_token, unk_token_id = "<s>", "</s>", 0

    def __init__(self, *tokens: str, ids: dict[int, str] | None = None) -> None:
        self.vocab = {token: i + 1 for i, token in enumerate(tokens)}
        self.names = ids or {}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab.get(token, 0)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.names.get(i, "x") for i in ids]


GOLDEN = {
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>"
    "\n\n### Instruction:\n2+2?\n\n### Response:\n4</s>",
    "chatglm": "Be brief.\n[Round 0]\n问：Hi\n答：Hello!</s>\n[Round 1]\n问：2+2?\n答：4</s>",
    "chatglm2": "Be brief.\n\n[Round 1]\n\n问：Hi\n\n答：Hello!</s>\n\n[Round 2]\n\n问：2+2?\n\n答：4</s>",
    "chatglm3": "<|system|>\nBe brief.<|user|>\nHi<|assistant|>\nHello!</s><|user|>\n2+2?<|assistant|>\n4</s>",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST] 4 </s>",
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "baichuan": "Be brief.<reserved_106>Hi<reserved_107>Hello!</s><reserved_106>2+2?<reserved_107>4</s>",
    "none": "Be brief.\nHiHello!</s>2+2?4</s>",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_writes_the_published_format(name):
    segments = get_template(name, TextTokenizer()).render(
        conversation("Hi", "Hello!", "2+2?", "4", system="Be brief."), for_generation=False
    )
    assert "".join(s.text for s in segments) == GOLDEN[name]
    assert all(s.text.endswith(("</s>", "<|im_end|>")) for s in segments if s.trainable)


def test_golden_formats_cover_every_template_but_hf_chat():
    assert set(GOLDEN) | {"hf_chat"} == set(TEMPLATES.names())


def test_alpaca_default_system_and_model_markers():
    text = "".join(s.text for s in get_template("alpaca", TextTokenizer()).render(conversation("Hi", "Yo"), False))
    assert text.startswith("Below is an instruction that describes a task.")
    glm = TextTokenizer("[gMASK]", "sop", "<sop>")
    assert get_template("chatglm2", glm).render(conversation("Hi"), True)[0].text.startswith("[gMASK]sop[Round 1]")
    assert (
        get_template("chatglm3", glm).render(conversation("Hi"), True)[0].text == "[gMASK]sop<|user|>\nHi<|assistant|>"
    )
    assert get_template("chatglm", glm).render(conversation("Hi"), True)[0].text.endswith("答：[gMASK]<sop>")
    baichuan13b = TextTokenizer(ids={195: "<reserved_102>", 196: "<reserved_103>"})
    assert (
        get_template("baichuan", baichuan13b).render(conversation("Hi"), True)[0].text
        == "<reserved_102>Hi<reserved_103>"
    )


def test_get_template_auto(default_tokenizer):
    assert get_template("auto", default_tokenizer).name == "hf_chat"
    assert get_template("auto", TextTokenizer(), family_default="llama2").name == "llama2"
    with pytest.raises(TunellmError, match="no chat template"):
        get_template("auto", TextTokenizer())
    with pytest.raises(TunellmError, match="did you mean 'chatml'"):
        get_template("chatmll", TextTokenizer())
