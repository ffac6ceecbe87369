"""Every template exports a Jinja chat template (what `tunellm merge` writes into the tokenizer) that renders
as the template does: through `apply_chat_template` of the saved and reloaded tokenizer, and through
`hf_chat` over it, so a merged folder prompts, chats and trains like the checkpoint it came from."""

from __future__ import annotations

import copy

import jinja2
import pytest
from transformers import AutoTokenizer

from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import TEMPLATES, get_template
from tunellm.data.templates.base import TurnTemplate
from tunellm.errors import TunellmError

SOURCE = Source("<export>")
GLM_MARKERS = ("[gMASK]", "sop", "<sop>")  # ChatGLM templates write these only when the tokenizer has them


def chat(*turns: tuple[str, str], system: str | None = None) -> Conversation:
    return Conversation([Turn(role, text) for role, text in turns], SOURCE, system=system)


U, A, T = "user", "assistant", "tool"
PROMPTS = {  # conversations to generate from
    "single": chat((U, "What is 2+2?")),
    "system": chat((U, "What is 2+2?"), system="Answer briefly."),
    "empty_system": chat((U, "Hi"), system=""),
    "multi": chat((U, "Hi!"), (A, "Hello, how can I help?"), (U, " Name a colour. "), system="Be kind."),
    "multi_no_system": chat((U, "Hi"), (A, " Yo "), (U, "Bye")),
    "tool_result": chat((U, "Weather?"), (A, "Let me look."), (T, '{"temp": 21}'), system="S"),
    "chinese": chat((U, "你好"), (A, "你好！有什么可以帮你？"), (U, "讲个笑话")),
}
FULL = {  # conversations ending with a reply, as training renders them
    "single": chat((U, "Hi"), (A, "Hello!")),
    "multi": chat((U, "Hi"), (A, "Hello!"), (U, "2+2?"), (A, " 4 "), system="Be brief."),
    "tool_result": chat((U, "Weather?"), (A, "Looking."), (T, "21"), (A, "It is 21.")),
}


def messages(conversation: Conversation) -> list[dict]:
    system = [] if conversation.system is None else [{"role": "system", "content": conversation.system}]
    return system + [{"role": turn.role, "content": turn.content} for turn in conversation.turns]


def text(template, conversation: Conversation, for_generation: bool) -> str:
    return "".join(segment.text for segment in template.render(conversation, for_generation))


CASES = [(name, False) for name in TEMPLATES.names()] + [(name, True) for name in ("chatglm", "chatglm2", "chatglm3")]


@pytest.fixture(scope="module")
def exported(default_tokenizer, tmp_path_factory) -> dict[tuple[str, bool], tuple]:
    """Per (template, GLM markers): the template, and a tokenizer carrying its export, saved and loaded again."""
    glm = copy.deepcopy(default_tokenizer)
    glm.add_special_tokens({"additional_special_tokens": list(GLM_MARKERS)})
    result = {}
    for name, markers in CASES:
        template = get_template(name, glm if markers else default_tokenizer)
        tokenizer = copy.deepcopy(glm if markers else default_tokenizer)
        tokenizer.chat_template = template.chat_template()
        folder = tmp_path_factory.mktemp(f"export-{name}")
        tokenizer.save_pretrained(folder)
        result[name, markers] = template, AutoTokenizer.from_pretrained(folder)
    return result


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize(("name", "markers"), CASES)
def test_apply_chat_template_equals_the_generation_render(exported, name, markers, prompt):
    template, tokenizer = exported[name, markers]
    conversation = PROMPTS[prompt]
    rendered = tokenizer.apply_chat_template(messages(conversation), tokenize=False, add_generation_prompt=True)
    assert rendered == text(template, conversation, True)
    if markers:
        assert rendered.startswith("[gMASK]sop") or rendered.endswith("[gMASK]<sop>")


@pytest.mark.parametrize("full", FULL)
@pytest.mark.parametrize(("name", "markers"), CASES)
def test_hf_chat_over_the_export_renders_training_samples_alike(exported, name, markers, full):
    template, tokenizer = exported[name, markers]
    conversation = FULL[full]
    rendered = tokenizer.apply_chat_template(messages(conversation), tokenize=False)
    assert rendered == text(template, conversation, False)
    again = get_template("hf_chat", tokenizer)
    trained = [s for s in template.render(conversation, False) if s.trainable]
    assert [s for s in again.render(conversation, False) if s.trainable] == trained


@pytest.mark.parametrize("name", sorted(set(TEMPLATES.names()) - {"hf_chat"}))
def test_tool_schemas_and_tool_calls_raise_instead_of_rendering_differently(exported, name):
    _, tokenizer = exported[name, False]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    with pytest.raises(jinja2.TemplateError, match="does not render tool schemas or tool calls"):
        tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tools=tools, tokenize=False)
    call = {"type": "function", "function": {"name": "weather", "arguments": {}}}
    with pytest.raises(jinja2.TemplateError, match="does not render tool schemas or tool calls"):
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}],
            tokenize=False,
        )


class Numbered(TurnTemplate):
    """Not registered: a piece that numbers rounds needs its own jinja_user."""

    name = "numbered"

    def user(self, content: str, round_index: int, system: str) -> str:
        return f"Q{round_index}: {content}\n"


def test_a_piece_that_is_more_than_substitution_must_write_its_own_jinja(default_tokenizer):
    with pytest.raises(TunellmError, match="user text depends on more than the message") as error:
        Numbered(default_tokenizer).chat_template()
    assert "override jinja_user" in str(error.value)
