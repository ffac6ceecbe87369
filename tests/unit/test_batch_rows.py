"""infer/batch.py: a batch whose rows are separate requests, each with its own length, stops, seed and
cancellation, gives every greedy row what `generate` gives it alone."""

from __future__ import annotations

import pytest

from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import get_template
from tunellm.infer.batch import Row, generate_rows
from tunellm.infer.generate import SamplingOptions, encode_prompts, generate
from tunellm.infer.stops import find_stops, with_stops

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUESTIONS = ["Hi", "What is 2+2?", "x " * 20, "A"]


@pytest.fixture(scope="module")
def setup(default_tokenizer, tiny_llama):
    model = tiny_llama(len(default_tokenizer))
    template = get_template("auto", default_tokenizer)
    conversations = [Conversation([Turn("user", q)], Source("q")) for q in QUESTIONS]
    prompts = encode_prompts(conversations, default_tokenizer, template, None)
    return model, default_tokenizer, template, conversations, prompts, find_stops(model, default_tokenizer, template)


def test_each_greedy_row_gets_its_own_reply_with_its_own_length(setup):
    model, tokenizer, template, conversations, prompts, stops = setup
    lengths = [12, 3, 7, 12]
    alone = [
        generate(model, tokenizer, template, [c], SamplingOptions(max_new_tokens=n))[0]
        for c, n in zip(conversations, lengths, strict=True)
    ]
    seen: list[list] = [[] for _ in prompts]
    rows = [
        Row(p, SamplingOptions(max_new_tokens=n), stops, emit=seen[i].append)
        for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))
    ]
    generate_rows(model, tokenizer, rows, stops)
    assert [row.result(tokenizer) for row in rows] == alone
    for row, items, n in zip(rows, seen, lengths, strict=True):
        assert items[-1] is None and [i for item in items[:-1] for i in item] == row.ids and len(row.ids) == n


def test_a_request_stop_string_ends_only_its_row(setup):
    model, tokenizer, template, conversations, prompts, stops = setup
    (full,) = generate(model, tokenizer, template, conversations[:1], SamplingOptions(max_new_tokens=12))
    stop = full.text.split()[2]  # a word in the middle of the greedy reply
    rows = [Row(prompts[0], SamplingOptions(max_new_tokens=12), with_stops(stops, [stop])) for _ in range(2)]
    rows[1] = Row(prompts[0], SamplingOptions(max_new_tokens=12), stops)
    generate_rows(model, tokenizer, rows, stops)
    cut, whole = rows[0].result(tokenizer), rows[1].result(tokenizer)
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]
    assert cut.completion_tokens < 12 and whole == full


def test_a_seeded_sampling_row_does_not_depend_on_its_batch(setup):
    model, tokenizer, _, _, prompts, stops = setup

    def sampled(batch: int, seed: int) -> str:
        options = SamplingOptions(max_new_tokens=8, temperature=0.9, top_p=0.9, top_k=40, seed=seed)
        rows = [Row(p, options, stops) for p in prompts[:batch]]
        generate_rows(model, tokenizer, rows, stops)
        return rows[0].result(tokenizer).text

    assert sampled(1, 5) == sampled(4, 5) == sampled(2, 5)
    assert sampled(1, 5) != sampled(1, 6)


def test_a_cancelled_row_ends_at_the_next_step_and_the_others_go_on(setup):
    model, tokenizer, template, conversations, prompts, stops = setup
    rows = [Row(p, SamplingOptions(max_new_tokens=20), stops) for p in prompts[:2]]

    def cancel_after_three(item) -> None:
        if item and len(rows[0].ids) == 3:
            rows[0].cancelled.set()

    rows[0].emit = cancel_after_three
    generate_rows(model, tokenizer, rows, stops)
    assert len(rows[0].ids) == 3 and rows[0].done
    (alone,) = generate(model, tokenizer, template, conversations[1:2], SamplingOptions(max_new_tokens=20))
    assert rows[1].result(tokenizer) == alone
