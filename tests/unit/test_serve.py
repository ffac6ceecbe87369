"""`tunellm serve` on a tiny llama and a tiny LoRA adapter, driven by the official `openai` client over a live
loopback server: models, plain and streamed chat, completions, adapter vs base, stops, limits and errors."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tunellm.data.record import Conversation, Source, Turn
from tunellm.infer.generate import SamplingOptions, generate
from tunellm.infer.load import load_for_inference
from tunellm.serve.app import create_app
from tunellm.serve.backends import TransformersBackend, load_models
from tunellm.serve.server import start_in_thread
from tunellm.serve.settings import ServeSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ASK = [{"role": "user", "content": "Hi"}]


def live(backend, **settings):
    """(server, thread, base URL) of `backend` served on a free loopback port."""
    config = ServeSettings(port=0, **settings)
    server, thread = start_in_thread(create_app(backend, config), config)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def models(tiny_lora_checkpoint):
    return load_models(str(tiny_lora_checkpoint.parent), [("again", str(tiny_lora_checkpoint))])


@pytest.fixture(scope="module")
def url(models):
    backend = TransformersBackend(models, ServeSettings(batch_size=8, queue_limit=32, max_tokens_cap=24))
    server, thread, base = live(backend, max_tokens_cap=24)
    yield base
    server.should_exit = True
    thread.join()
    backend.close()


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def reference(checkpoint, message: str, max_new_tokens: int, *, adapter: bool = True) -> str:
    loaded = load_for_inference(checkpoint if adapter else None, model=None if adapter else str(base_of(checkpoint)))
    conversation = Conversation([Turn("user", message)], Source("<t>"), system=loaded.config.data.system)
    options = SamplingOptions(max_new_tokens=max_new_tokens)
    return generate(loaded.model, loaded.tokenizer, loaded.template, [conversation], options)[0].text


def base_of(checkpoint):
    import yaml

    return yaml.safe_load((checkpoint / "config.yaml").read_text())["model"]["name_or_path"]


def test_models_lists_the_base_and_each_adapter_by_name(client, tiny_lora_checkpoint):
    names = [card.id for card in client.models.list()]
    assert names == [Path(base_of(tiny_lora_checkpoint)).name, "run", "again"]
    assert client.models.retrieve("again").id == "again"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_answers_as_generate_does_for_the_adapter_and_the_base(client, models, tiny_lora_checkpoint):
    base_name = next(iter(models))
    tuned = client.chat.completions.create(model="run", messages=ASK, max_tokens=9, temperature=0)
    base = client.chat.completions.create(model=base_name, messages=ASK, max_tokens=9, temperature=0)
    assert tuned.choices[0].message.content == reference(tiny_lora_checkpoint, "Hi", 9)
    assert base.choices[0].message.content == reference(tiny_lora_checkpoint, "Hi", 9, adapter=False)
    assert tuned.choices[0].message.content != base.choices[0].message.content
    assert tuned.choices[0].finish_reason == "length"
    assert tuned.usage.completion_tokens == 9 and tuned.usage.total_tokens == tuned.usage.prompt_tokens + 9


def test_a_batch_mixing_models_gives_each_request_its_own_model(client, models):
    names = [next(iter(models)), "run", "again"] * 4
    questions = [f"Question number {i // 3}?" for i in range(len(names))]  # one question per model triple

    def ask(pair):
        name, question = pair
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": question}], max_tokens=6, temperature=0
        )
        return reply.choices[0].message.content

    alone = [ask(pair) for pair in zip(names, questions, strict=True)]
    with ThreadPoolExecutor(len(names)) as pool:
        together = list(pool.map(ask, zip(names, questions, strict=True)))
    assert together == alone
    assert alone[1] == alone[2] and alone[0] != alone[1]  # run and again are the same adapter


def test_streamed_chat_joins_to_the_plain_reply(client):
    plain = client.chat.completions.create(model="run", messages=ASK, max_tokens=12, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="run", messages=ASK, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1


def test_stop_strings_seed_and_the_max_tokens_cap(client):
    full = client.chat.completions.create(model="run", messages=ASK, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    stop = text.split()[2]
    cut = client.chat.completions.create(model="run", messages=ASK, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    capped = client.chat.completions.create(model="run", messages=ASK, max_tokens=1000, temperature=0)
    assert capped.usage.completion_tokens == 24 and capped.choices[0].finish_reason == "length"  # the server's cap

    def sampled(seed):
        reply = client.chat.completions.create(model="run", messages=ASK, max_tokens=8, temperature=1, seed=seed)
        return reply.choices[0].message.content

    assert sampled(3) == sampled(3) != sampled(4)


def test_completions_plain_and_streamed(client, models):
    base_name = next(iter(models))
    loaded = models[base_name].loaded
    plain = client.completions.create(model=base_name, prompt="Once upon a time", max_tokens=7, temperature=0)
    ids = loaded.tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    assert plain.usage.prompt_tokens == len(ids) and plain.usage.completion_tokens == 7
    streamed = client.completions.create(
        model=base_name, prompt="Once upon a time", max_tokens=7, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text


def test_bad_requests_get_a_4xx_in_openai_error_shape(url, client):
    ok = json.dumps({"model": "run", "messages": ASK})
    cases = {
        "{not json": 400,
        "[1, 2]": 400,
        json.dumps({"model": "run", "messages": []}): 400,
        json.dumps({"model": "run", "messages": ASK, "temperature": "hot"}): 400,
        json.dumps({"model": "run", "messages": ASK, "n": 2}): 400,
        json.dumps({"model": "run", "messages": [{"role": "wizard", "content": "x"}]}): 400,
        json.dumps({"model": "run", "messages": [{"role": "user", "content": 5}]}): 400,
        json.dumps({"model": "run", "messages": [{"role": "user", "content": "x " * 600}]}): 400,  # context 512
        json.dumps({"model": "nope", "messages": ASK}): 404,
        json.dumps({"model": "run", "messages": ASK, "seed": 2**70}): 400,
        json.dumps({"model": "run", "messages": ASK, "stop": ["a", "b", "c", "d", "e"]}): 400,
        json.dumps({"model": "run", "messages": ASK, "temperature": 1e-30, "max_tokens": 2}): 200,
        ok: 200,
    }
    for body, status in cases.items():
        response = httpx.post(url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status, (body[:60], response.text)
        if status != 200:
            error = response.json()["error"]
            assert error["message"] and error["type"] and set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=ASK)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="run", prompt="word " * 600)
    assert refused.value.code == "context_length_exceeded"
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_a_client_closing_a_stream_frees_its_slot_and_stops_its_generation(url, models):
    model = models["run"].loaded.model
    steps = []
    hook = model.base_model.model.model.layers[0].register_forward_hook(lambda *args: steps.append(1))
    try:
        body = {"model": "run", "messages": ASK, "max_tokens": 24, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            next(line for line in lines if '"content"' in line)
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url + "/health").json()["in_flight"] == 0
    finally:
        hook.remove()
    assert len(steps) < 24


def test_a_checkpoint_that_cannot_share_the_base_is_served_on_its_own(tiny_llama_dir, write_checkpoint, tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    from tunellm.infer.batch import Row
    from tunellm.methods import freeze
    from tunellm.methods.freeze import FreezeMethod

    model = freeze.apply(LlamaForCausalLM.from_pretrained(tiny_llama_dir), FreezeMethod(trainable_layers=1), None)
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.add_(torch.randn_like(param) * 0.5)
    checkpoint = write_checkpoint(
        model, tmp_path / "frozen" / "step-1", FreezeMethod(trainable_layers=1), tiny_llama_dir
    )
    models = load_models(str(tiny_llama_dir), [("frozen", str(checkpoint))])
    base, frozen = models.values()
    assert frozen.loaded.model is not base.loaded.model  # its own copy of the weights
    backend = TransformersBackend(models, ServeSettings())
    try:
        replies = []
        for served in (base, frozen):
            conversation = Conversation([Turn("user", "Hi")], Source("<t>"))
            row = Row(served.encode_chat(conversation), SamplingOptions(max_new_tokens=6), served.stops)
            backend.run_batch(served.name, [row])
            loaded = served.loaded
            expected = generate(loaded.model, loaded.tokenizer, loaded.template, [conversation], row.options)[0]
            assert row.result(loaded.tokenizer) == expected
            replies.append(expected.text)
        assert replies[0] != replies[1]
    finally:
        backend.close()


def test_a_client_giving_up_on_a_plain_request_frees_its_slot(url, models):
    model = models["run"].loaded.model
    steps = []

    def slow_step(*args) -> None:
        steps.append(1)
        time.sleep(0.1)

    hook = model.base_model.model.model.layers[0].register_forward_hook(slow_step)
    try:
        body = {"model": "run", "messages": ASK, "max_tokens": 24}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url + "/health").json()["in_flight"] == 0
    finally:
        hook.remove()
    assert len(steps) < 24  # stopped before its 24 tokens


class Scripted:
    """A backend whose every reply is `reply` (tokenized), held until `gate` is set."""

    name = "scripted"

    def __init__(self, models, reply: str, queue_limit: int) -> None:
        from tunellm.serve.scheduler import Scheduler

        self.models = models
        self.reply = reply
        self.gate = threading.Event()
        self.scheduler = Scheduler(self.run_batch, batch_size=4, queue_limit=queue_limit, wait_s=0)

    def run_batch(self, name, rows) -> None:
        served = self.models[name]
        self.gate.wait(10)
        ids = served.loaded.tokenizer(self.reply, add_special_tokens=False)["input_ids"]
        for row in rows:
            row.ids = [*ids, min(served.stops.eos_ids)]
            row.emit(row.ids)
            row.done = True
            row.emit(None)


def test_requests_over_the_queue_limit_get_429(models):
    backend = Scripted(models, "fine", queue_limit=2)
    server, thread, url = live(backend)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        ask = lambda: client.chat.completions.create(model="run", messages=ASK)  # noqa: E731
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(ask) for _ in range(2)]
            deadline = time.monotonic() + 5
            while backend.scheduler.stats()["in_flight"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError):
                ask()
            backend.gate.set()
            assert [f.result().choices[0].message.content for f in held] == ["fine", "fine"]
        assert ask().choices[0].finish_reason == "stop"
    finally:
        server.should_exit = True
        thread.join()
        backend.scheduler.close()


def test_tool_definitions_go_into_the_prompt_and_tool_calls_come_back(models):
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    backend = Scripted(models, "Let me look." + "\n" + call, queue_limit=8)
    backend.gate.set()
    server, thread, url = live(backend)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    history = [
        {"role": "user", "content": "Weather in Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 21}'},
        {"role": "assistant", "content": "21 degrees."},
        {"role": "user", "content": "And in Paris?"},
    ]
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="run", messages=history, tools=tools)
        without = client.chat.completions.create(model="run", messages=history)
        streamed = list(client.chat.completions.create(model="run", messages=history, tools=tools, stream=True))
    finally:
        server.should_exit = True
        thread.join()
        backend.scheduler.close()
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    (made,) = choice.message.tool_calls
    assert made.function.name == "get_weather" and json.loads(made.function.arguments) == {"city": "Paris"}
    assert reply.usage.prompt_tokens > without.usage.prompt_tokens + 50  # the tool list is in the prompt
    assert without.choices[0].message.tool_calls is None and "<tool_call>" in without.choices[0].message.content
    deltas = [c.choices[0] for c in streamed if c.choices]
    assert deltas[-1].finish_reason == "tool_calls"
    assert [d.delta.tool_calls[0].function.name for d in deltas if d.delta.tool_calls] == ["get_weather"]
