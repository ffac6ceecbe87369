"""`tunellm serve` on the embedded default model, through the `openai` client: it answers exactly as
`tunellm chat` does, and 16 concurrent requests are batched (faster than one at a time, same replies)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tunellm.data.tokenize import TokenizeOptions
from tunellm.infer.chat import ChatSession
from tunellm.infer.generate import SamplingOptions, generate
from tunellm.serve.app import create_app
from tunellm.serve.backends import DEFAULT_NAME, TransformersBackend, load_models
from tunellm.serve.server import start_in_thread
from tunellm.serve.settings import ServeSettings

pytestmark = pytest.mark.slow
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "Write a haiku about rain.",
    "What is 12 times 12?",
    "Give me a synonym for happy.",
    "Who wrote Hamlet?",
    "What do bees make?",
    "Say hello in Spanish.",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Name a planet.",
    "What colour is the sky?",
    "Suggest a name for a cat.",
    "What is the opposite of cold?",
    "Tell me a fun fact.",
    "What is a noun?",
]


@pytest.fixture(scope="module")
def served():
    models = load_models(None, [])
    settings = ServeSettings(port=0)
    backend = TransformersBackend(models, settings)
    server, thread = start_in_thread(create_app(backend, settings), settings)
    port = server.servers[0].sockets[0].getsockname()[1]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
    yield models[DEFAULT_NAME].loaded, client
    server.should_exit = True
    thread.join()
    backend.close()


def ask(client, question: str, max_tokens: int, **extra):
    messages = [{"role": "user", "content": question}]
    return client.chat.completions.create(
        model=DEFAULT_NAME, messages=messages, max_tokens=max_tokens, temperature=0, **extra
    )


def test_greedy_replies_equal_tunellm_chat_token_for_token(served):
    loaded, client = served
    options = SamplingOptions(max_new_tokens=16)
    tokenize_options = TokenizeOptions.from_config(loaded.config.data)
    for number, question in enumerate(QUESTIONS[:2]):
        session = ChatSession(
            loaded.model, loaded.tokenizer, loaded.template, options, tokenize_options=tokenize_options
        )
        conversation = session.conversation(question)
        expected = "".join(session.reply(question))  # what `tunellm chat --prompt QUESTION` prints
        reply = ask(client, question, 16)
        assert reply.choices[0].message.content == expected
        if number:
            continue
        streamed = ask(client, question, 16, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected
        (alone,) = generate(loaded.model, loaded.tokenizer, loaded.template, [conversation], options)
        used = reply.usage
        assert (used.prompt_tokens, used.completion_tokens) == (alone.prompt_tokens, alone.completion_tokens)
        assert reply.choices[0].finish_reason == alone.finish_reason


def test_sixteen_concurrent_requests_are_batched(served, capsys):
    _, client = served
    with ThreadPoolExecutor(16) as pool:  # open the connections first
        list(pool.map(lambda q: ask(client, q, 1), QUESTIONS))
        start = time.perf_counter()
        alone = [ask(client, q, 16).choices[0].message.content for q in QUESTIONS]
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        together = list(pool.map(lambda q: ask(client, q, 16).choices[0].message.content, QUESTIONS))
        concurrent = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n16 greedy requests of 16 tokens: one at a time {sequential:.1f} s, concurrent {concurrent:.1f} s")
    assert together == alone
    assert concurrent < 0.6 * sequential
