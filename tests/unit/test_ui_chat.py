"""The Chat page's reply function answers what `tunellm chat` answers for the same settings, turn after turn."""

import pytest
from typer.testing import CliRunner

from tunellm.cli.main import app
from tunellm.errors import ConfigError
from tunellm.ui.chat import BASE, BASE_OF, Models, Settings, as_history, model_choices, stream_reply

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_lora_checkpoint):
    return Models(tiny_lora_checkpoint.parent.parent, device="cpu")


def cli_replies(args, messages):
    result = CliRunner().invoke(app, ["chat", *args, "--device", "cpu"], input="".join(m + "\n" for m in messages))
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def page_replies(models, choice, messages, settings, left=None):
    history = []
    replies = []
    for message in messages:
        *_, reply = stream_reply(models.get(choice, left), history, message, settings)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
        replies.append(reply)
    return replies


def test_runs_and_checkpoints_are_offered(models):
    assert model_choices(models.runs) == [BASE, "run", "run/step-2"]


def test_page_replies_equal_tunellm_chat_over_two_turns(models, tiny_lora_checkpoint):
    messages = ["Hello there", "And again?"]
    settings = Settings(max_new_tokens=6)
    page = page_replies(models, "run/step-2", messages, settings)
    assert page == cli_replies(["--adapter", str(tiny_lora_checkpoint), "--max-new-tokens", "6"], messages)
    assert all(page)
    with_system = page_replies(models, "run", messages[:1], Settings(system="Be terse.", max_new_tokens=6))
    cli = ["--adapter", str(tiny_lora_checkpoint), "--max-new-tokens", "6", "--system", "Be terse."]
    assert with_system == cli_replies(cli, messages[:1])


def test_sampled_replies_equal_tunellm_chat_with_the_same_seed(models, tiny_lora_checkpoint):
    settings = Settings(temperature=0.9, top_p=0.8, max_new_tokens=6, seed=3)
    page = page_replies(models, "run/step-2", ["Hi"], settings)
    cli = ["--adapter", str(tiny_lora_checkpoint), "--max-new-tokens", "6", "--temperature", "0.9", "--top-p", "0.8"]
    assert page == cli_replies([*cli, "--seed", "3"], ["Hi"])


def test_the_base_beside_the_tuned_model_is_its_base_without_the_adapter(models, tiny_lora_checkpoint, tiny_llama_dir):
    settings = Settings(max_new_tokens=6)
    base = page_replies(models, BASE_OF, ["Hello there"], settings, left="run/step-2")
    tuned = page_replies(models, "run/step-2", ["Hello there"], settings)
    assert base != tuned
    template = models.get("run/step-2").template.name
    cli = ["--model", str(tiny_llama_dir), "--template", template, "--max-new-tokens", "6"]
    assert base == cli_replies(cli, ["Hello there"])


def test_chatbot_messages_become_plain_history_and_paths_stay_under_runs(models):
    shown = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "yo"}]
    assert as_history(shown) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with pytest.raises(ConfigError, match="outside"):
        models.get("../../etc")
