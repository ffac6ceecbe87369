"""Generation on a tiny random llama with the real default vocabulary: batch-size independence, stop strings,
streaming, and prompts identical to the training render's prompt part."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import get_template
from tunellm.data.tokenize import encode_conversation
from tunellm.errors import ConfigError
from tunellm.infer.generate import SamplingOptions, generate, stream
from tunellm.infer.stops import cut_at_stop, held_back

SOURCE = Source("chats.jsonl", line=3)
QUESTIONS = [
    "Hi",
    "What is 2+2?",
    "Name three colours, please.",
    "Why is the sky blue?",
    "x " * 20,
    "Tell me",
    "A",
    "?",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(default_tokenizer, tiny_llama):
    return tiny_llama(len(default_tokenizer))


def successor_model(tiny_llama, tokenizer, chain: list[int]) -> LlamaForCausalLM:
    """A tiny llama whose greedy continuation of token chain[i] is chain[i + 1].

    Large random embeddings dominate the residual stream of the (small-weighted) layers, and each
    successor's output row is its predecessor's embedding, so that row's logit wins by far.
    """
    assert len(set(chain[:-1])) == len(chain) - 1, "a token can have only one successor"
    model = tiny_llama(len(tokenizer), seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for token, successor in zip(chain[:-1], chain[1:], strict=True):
            model.model.embed_tokens.weight[token] = torch.randn(64, generator=generator)
            model.lm_head.weight[successor] += model.model.embed_tokens.weight[token]
    return model


def chat(*texts: str, system: str | None = None) -> Conversation:
    roles = ["user", "assistant"]
    return Conversation([Turn(roles[i % 2], t) for i, t in enumerate(texts)], SOURCE, system=system)


def test_greedy_output_does_not_depend_on_batch_size(model, default_tokenizer):
    template = get_template("auto", default_tokenizer)
    conversations = [chat(q) for q in QUESTIONS]
    options = SamplingOptions(max_new_tokens=12)
    alone = [generate(model, default_tokenizer, template, [c], options)[0] for c in conversations]
    for batch_size in (3, 8):
        batched = generate(model, default_tokenizer, template, conversations, options, batch_size=batch_size)
        assert [g.text for g in batched] == [g.text for g in alone]
    assert all(g.finish_reason == "length" and g.completion_tokens == 12 for g in alone)
    assert len({g.text for g in alone}) > 1  # the prompts do matter


def test_generation_prompt_is_the_training_prompt_token_for_token(model, default_tokenizer, monkeypatch):
    template = get_template("auto", default_tokenizer)
    full = chat("Hi!", "Hello.", "Name a colour.", "Blue.", system="Be brief.")
    sample = encode_conversation(full, default_tokenizer, template)
    last_reply_start = int((sample["labels"] != -100).nonzero()[0][-1])
    while last_reply_start > 0 and sample["labels"][last_reply_start - 1] != -100:
        last_reply_start -= 1
    expected = sample["input_ids"][:last_reply_start].tolist()

    seen = {}
    original = model.generate

    def recording(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", recording)
    short = chat("Hi")  # padded on the left beside the longer prompt
    prompt = Conversation(full.turns[:3], SOURCE, system="Be brief.")
    generate(model, default_tokenizer, template, [prompt, short], SamplingOptions(max_new_tokens=2))
    ids, mask = seen["input_ids"][1], seen["attention_mask"][1]  # rows are sorted by length: the long one is last
    assert ids[mask.bool()].tolist() == expected
    assert mask.all()
    short_mask = seen["attention_mask"][0]
    assert short_mask[0] == 0 and short_mask[-1] == 1  # left padding


def chain_for(tokenizer, template, continuation: str) -> list[int]:
    prompt = encode_conversation(chat("Capital of France?"), tokenizer, template, for_generation=True)
    return [int(prompt["input_ids"][-1]), *tokenizer(continuation, add_special_tokens=False)["input_ids"]]


def test_multi_token_stop_string_stops_generation_and_is_cut(default_tokenizer, tiny_llama):
    template = get_template("alpaca", default_tokenizer)
    assert "### Instruction:" in template.stop_strings
    chain = chain_for(default_tokenizer, template, "Paris is nice. ### Instruction: More")
    model = successor_model(tiny_llama, default_tokenizer, chain)
    conversations = [chat("Capital of France?"), chat("Hello there, how are you today?"), chat("Hm")]
    results = generate(model, default_tokenizer, template, conversations, SamplingOptions(max_new_tokens=40))
    for result in results:
        assert result.text == "Paris is nice. "
        assert result.finish_reason == "stop"
        assert result.completion_tokens == len(chain) - 2  # up to the stop string's last token, not beyond
    pieces = list(stream(model, default_tokenizer, template, conversations[0], SamplingOptions(max_new_tokens=40)))
    assert "".join(pieces) == "Paris is nice. "
    assert not any("#" in piece for piece in pieces)


def test_eos_stops_generation_and_is_not_in_the_text(default_tokenizer, tiny_llama):
    template = get_template("auto", default_tokenizer)  # the tokenizer's ChatML: <|im_end|> ends a turn
    chain = chain_for(default_tokenizer, template, "It is Paris.<|im_end|>")
    model = successor_model(tiny_llama, default_tokenizer, chain)
    (result,) = generate(model, default_tokenizer, template, [chat("Capital of France?")], SamplingOptions())
    assert (result.text, result.finish_reason, result.completion_tokens) == ("It is Paris.", "stop", len(chain) - 1)
    assert "".join(stream(model, default_tokenizer, template, chat("Capital of France?"))) == "It is Paris."


def test_stream_joins_to_the_generated_text(model, default_tokenizer):
    template = get_template("auto", default_tokenizer)
    options = SamplingOptions(max_new_tokens=15)
    for question in QUESTIONS[:3]:
        pieces = list(stream(model, default_tokenizer, template, chat(question), options))
        (result,) = generate(model, default_tokenizer, template, [chat(question)], options)
        assert "".join(pieces) == result.text
        assert len(pieces) > 1


def test_closing_a_stream_stops_generation(model, default_tokenizer):
    template = get_template("auto", default_tokenizer)
    steps = []
    hook = model.model.layers[0].register_forward_hook(lambda *args: steps.append(1))
    try:
        pieces = stream(model, default_tokenizer, template, chat("Hi"), SamplingOptions(max_new_tokens=200))
        next(pieces)
        pieces.close()
    finally:
        hook.remove()
    assert len(steps) < 50


def test_sampling_is_repeatable_with_a_seed(model, default_tokenizer):
    template = get_template("auto", default_tokenizer)
    conversations = [chat("Hi"), chat("Hello")]

    def sample(seed: int) -> list[str]:
        options = SamplingOptions(max_new_tokens=8, temperature=1.0, top_k=50, seed=seed)
        return [g.text for g in generate(model, default_tokenizer, template, conversations, options)]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_sampling_options_are_checked():
    with pytest.raises(ConfigError, match="top_p"):
        SamplingOptions(top_p=0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        SamplingOptions(max_new_tokens=0)


def test_stop_helpers():
    assert cut_at_stop("abc###x</s>", ["</s>", "###"]) == ("abc", True)
    assert cut_at_stop("abc", ["</s>"]) == ("abc", False)
    assert held_back("Paris ##", ["### Instruction:"]) == 2
    assert held_back("Paris <|im", ["<|im_end|>"]) == 4
    assert held_back("Paris", ["<|im_end|>"]) == 0
    assert held_back("caf\ufffd", ["</s>"]) == 1


def test_a_reply_cut_at_max_new_tokens_drops_a_broken_character(default_tokenizer):
    from tunellm.infer.stops import Stops, finish_text

    ids = default_tokenizer("您好，我可以提供建议", add_special_tokens=False)["input_ids"]
    cut = ids[:-1]  # in SmolLM2's byte-level vocabulary a Chinese character spans several tokens
    assert "\ufffd" in default_tokenizer.decode(cut) or default_tokenizer.decode(cut) == "您好，我可以提供建"
    text, reason, count = finish_text(default_tokenizer, cut, Stops(frozenset(), (), ()), pad_id=-1)
    assert reason == "length" and count == len(cut)
    assert "\ufffd" not in text and text.startswith("您好，我可以提供")
