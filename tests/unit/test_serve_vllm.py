"""The vLLM serving backend, driven against a stand-in `vllm` package (no GPU here): one engine on the base,
each adapter a LoRA request by name, prompts as tunellm's token ids; and the fall back to transformers for
checkpoints vLLM cannot serve."""

from __future__ import annotations

import shutil
import sys
import types

import pytest
import yaml
from fastapi.testclient import TestClient

from tunellm.errors import ConfigError
from tunellm.serve import vllm_serving
from tunellm.serve.app import create_app
from tunellm.serve.backends import TransformersBackend
from tunellm.serve.protocol import ChatRequest
from tunellm.serve.server import build_backend
from tunellm.serve.settings import ServeSettings


class StandInVllm:
    """Records engines and calls; answers each prompt with `reply`'s ids and text."""

    def __init__(self, tokenizer, reply: str) -> None:
        self.engines: list[dict] = []
        self.calls: list[dict] = []
        fake = self
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

        class LLM:
            def __init__(self, **kwargs) -> None:
                fake.engines.append(kwargs)

            def generate(self, prompts, params, lora_request=None):
                fake.calls.append({"prompts": prompts, "params": params, "lora": lora_request})
                done = types.SimpleNamespace(text=reply, finish_reason="stop", token_ids=ids)
                return [types.SimpleNamespace(outputs=[done]) for _ in prompts]

        def lora_request(name, number, path):
            return types.SimpleNamespace(name=name, id=number, path=path)

        self.modules = {
            "vllm": types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kwargs: kwargs),
            "vllm.lora": types.SimpleNamespace(),
            "vllm.lora.request": types.SimpleNamespace(LoRARequest=lora_request),
        }


@pytest.fixture
def stand_in(monkeypatch, default_tokenizer):
    fake = StandInVllm(default_tokenizer, "Bonjour!")
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(vllm_serving, "vllm_unavailable", lambda: None)  # as on a CUDA machine with vLLM
    return fake


def test_adapters_are_served_as_lora_requests_by_name(stand_in, tiny_lora_checkpoint, tiny_llama_dir):
    said: list[str] = []
    settings = ServeSettings(batch_size=4)
    backend = build_backend(
        str(tiny_lora_checkpoint.parent), [("again", str(tiny_lora_checkpoint))], "vllm", settings, say=said.append
    )
    assert backend.name == "vllm" and said == ["generation: vLLM"]
    (engine,) = stand_in.engines
    assert engine["model"] == str(tiny_llama_dir) and engine["enable_lora"] and engine["max_loras"] == 2
    base_name = next(iter(backend.models))
    try:
        with TestClient(create_app(backend, settings)) as client:
            for model in (base_name, "run", "again"):
                body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "seed": 7}
                reply = client.post("/v1/chat/completions", json=body).json()
                assert reply["choices"][0]["message"]["content"] == "Bonjour!", reply
                assert reply["choices"][0]["finish_reason"] == "stop"
            streamed = client.post("/v1/chat/completions", json={**body, "stream": True}).text
            assert '"content": "Bonjour!"' in streamed and streamed.endswith("data: [DONE]\n\n")
    finally:
        backend.close()
    assert [call["lora"] and call["lora"].name for call in stand_in.calls] == [None, "run", "again", "again"]
    assert stand_in.calls[1]["lora"].path == str(tiny_lora_checkpoint)
    served = backend.models["run"]
    request = ChatRequest(model="run", messages=[{"role": "user", "content": "Hi"}])
    expected = served.encode_chat(request.conversation(served.system))  # tunellm's render, as transformers gets it
    assert stand_in.calls[1]["prompts"] == [{"prompt_token_ids": expected}]
    params = stand_in.calls[1]["params"][0]
    # an omitted temperature comes from the run's generate: section (greedy), not OpenAI's 1.0
    assert params["max_tokens"] == 5 and params["seed"] == 7 and params["temperature"] == 0.0
    assert set(served.stops.eos_ids) <= set(params["stop_token_ids"])


def test_checkpoints_vllm_cannot_serve_fall_back_to_transformers(stand_in, tiny_lora_checkpoint, tmp_path):
    dora = tmp_path / "dora" / "step-1"
    shutil.copytree(tiny_lora_checkpoint, dora)
    config = yaml.safe_load((dora / "config.yaml").read_text())
    config["method"]["use_dora"] = True
    (dora / "config.yaml").write_text(yaml.safe_dump(config))
    said: list[str] = []
    backend = build_backend(str(dora.parent), [], "vllm", ServeSettings(), say=said.append)
    try:
        assert isinstance(backend, TransformersBackend) and not stand_in.engines
        assert said == ["generation: transformers (dora: vLLM does not serve DoRA adapters)"]
    finally:
        backend.close()


def test_backend_vllm_without_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(vllm_serving, "vllm_unavailable", lambda: "vLLM is not installed")
    with pytest.raises(ConfigError, match="--backend vllm: vLLM is not installed"):
        build_backend(None, [], "vllm", ServeSettings())
