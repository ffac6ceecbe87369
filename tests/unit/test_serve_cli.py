"""`tunellm serve` as a user runs it: a subprocess on a free loopback port with an API key from the environment,
then a bounded load test with the official `openai` client (a third of the requests malformed)."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

KEY = "sesame"
QUESTIONS = [f"Tell me about item {i}." for i in range(8)]
MALFORMED = [
    b"{not json",
    json.dumps({"model": "run", "messages": []}).encode(),
    json.dumps({"model": "run", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(),
    json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}).encode(),
    json.dumps({"model": "run", "messages": [{"role": "user", "content": "x " * 600}]}).encode(),
    json.dumps({"model": "run", "prompt": "x"}).encode(),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def served(tiny_lora_checkpoint, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "TUNELLM_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tunellm", "serve", str(tiny_lora_checkpoint.parent)]
    command += ["--adapter", f"again={tiny_lora_checkpoint}", "--port", str(port), "--max-tokens-cap", "4"]
    command += ["--queue-limit", "256", "--batch-size", "16"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield url, process, log
    process.terminate()
    process.wait(timeout=20)


def test_the_api_key_guards_every_route_but_health(served):
    url, _, log = served
    assert httpx.get(url + "/health").json()["status"] == "ok"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.get(url + "/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    names = [m.id for m in openai.OpenAI(base_url=url + "/v1", api_key=KEY).models.list()]
    assert names[1:] == ["run", "again"]
    text = log.read_text()
    assert f"http://127.0.0.1:{url.rsplit(':', 1)[1]}" in text  # loopback by default
    assert "generation: transformers" in text and "again: checkpoint" in text


def test_a_bounded_load_leaves_the_server_healthy_and_its_memory_flat(served, capsys):
    url, process, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    models = [m.id for m in client.models.list()][:2]  # the base and "run"

    def ask(job: tuple[str, str]) -> tuple[str, float, int]:
        model, question = job
        start = time.perf_counter()
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=4, temperature=0
        )
        return reply.choices[0].message.content, time.perf_counter() - start, reply.usage.completion_tokens

    def bad(body: bytes) -> int:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        return httpx.post(url + "/v1/chat/completions", content=body, headers=headers, timeout=60).status_code

    jobs = [(m, q) for m in models for q in QUESTIONS]
    expected = {job: ask(job)[0] for job in jobs}  # one request at a time
    plan = [("bad", MALFORMED[i % len(MALFORMED)]) if i % 3 == 2 else ("ok", jobs[i % len(jobs)]) for i in range(500)]

    def run(item):
        kind, what = item
        return (kind, what, bad(what)) if kind == "bad" else (kind, what, ask(what))

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(run, plan[:64]))  # warm up: the largest batches, then measure
        before = rss_mb(process.pid)
        start = time.perf_counter()
        first = list(pool.map(run, plan[:250]))
        middle = rss_mb(process.pid)
        results = first + list(pool.map(run, plan[250:]))
        wall = time.perf_counter() - start
    after = rss_mb(process.pid)
    answers = [(what, got) for kind, what, got in results if kind == "ok"]
    statuses = [got for kind, _, got in results if kind == "bad"]
    assert all(got[0] == expected[what] for what, got in answers)
    assert all(400 <= status < 500 for status in statuses)
    assert httpx.get(url + "/health").json() | {"in_flight": 0} == httpx.get(url + "/health").json()
    latencies = sorted(got[1] for _, got in answers)
    tokens = sum(got[2] for _, got in answers)
    with capsys.disabled():
        print(
            f"\nserve load: {len(results)} requests ({len(answers)} valid, {len(statuses)} malformed -> 4xx), "
            f"32 clients, {wall:.1f} s; p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p95 {latencies[int(0.95 * len(latencies))] * 1000:.0f} ms; {tokens / wall:.0f} completion tokens/s; "
            f"RSS {before:.0f} -> {middle:.0f} -> {after:.0f} MB"
        )
    assert after - middle < 48 and after - before < 128


def test_safe_defaults_and_bad_settings_stop_before_loading(monkeypatch):
    from typer.testing import CliRunner

    from tunellm.cli.main import app
    from tunellm.serve.settings import ServeSettings

    assert ServeSettings().host == "127.0.0.1" and ServeSettings().api_key is None
    monkeypatch.setenv("TUNELLM_API_KEY", "from-env")
    assert ServeSettings().with_env_key().api_key == "from-env"
    assert ServeSettings(api_key="flag").with_env_key().api_key == "flag"
    result = CliRunner().invoke(app, ["serve", "--batch-size", "0"])
    assert result.exit_code != 0 and "--batch-size" in str(result.exception or result.output)
    result = CliRunner().invoke(app, ["serve", "--adapter", "=x"])
    assert result.exit_code != 0 and "NAME=PATH" in str(result.exception or result.output)
