"""Contract over every registered model family, on tiny random models saved to folders and loaded back
through `load_model`: LoRA wrap, two optimizer steps, adapter save and reload with identical logits, generate.

chatglm and baichuan run through small remote-code models written for the tests (tests/fixtures/remote_code)
that use their config fields and module names, so the trust_remote_code gate and their LoRA targets are real.
That path remains for what has no native form (quantized ChatGLM releases, Baichuan-13B's ALiBi) and for users
who trust a checkpoint's code; ChatGLM-6B/2/3 and Baichuan-7B load natively without it (tests/unit/test_convert_*,
tests/unit/test_chatglm6b.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunellm.config.schema import ModelConfig
from tunellm.data.templates import TEMPLATES
from tunellm.errors import ConfigError, ModelError
from tunellm.methods import METHODS, enable_activation_checkpointing, lora
from tunellm.models import load as load_module
from tunellm.models.families import FAMILIES, GENERIC, family_for
from tunellm.models.families.base import TINY_VOCAB
from tunellm.models.load import load_model, resolve_attention, resolve_dtype

FAMILIES_DIR = Path(importlib.import_module("tunellm.models.families").__file__).parent
REMOTE_CODE = Path(__file__).parents[1] / "fixtures" / "remote_code"
REMOTE_CLASSES = {  # family -> (modeling file, config class, model class)
    "chatglm": ("modeling_chatglm.py", "ChatGLMConfig", "ChatGLMForConditionalGeneration"),
    "baichuan": ("modeling_baichuan.py", "BaichuanConfig", "BaichuanForCausalLM"),
}
# a model type that no family claims, to exercise the generic fallback
GENERIC_TINY = {
    "model_type": "phi",
    "vocab_size": TINY_VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
CONTRACT = [*FAMILIES.names(), "generic"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(TINY_VOCAB - 3))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # no pad token on purpose: the families' fixes must supply one
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def build_native(tiny: dict, folder: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(tiny)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)


def build_remote(name: str, tiny: dict, folder: Path) -> None:
    file_name, config_class, model_class = REMOTE_CLASSES[name]
    spec = importlib.util.spec_from_file_location(f"tiny_remote_{name}", REMOTE_CODE / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fields = {key: value for key, value in tiny.items() if key != "model_type"}
    config = getattr(module, config_class)(**fields)
    stem = file_name.removesuffix(".py")
    config.auto_map = {"AutoConfig": f"{stem}.{config_class}", "AutoModelForCausalLM": f"{stem}.{model_class}"}
    getattr(module, model_class)(config).save_pretrained(folder)
    shutil.copy(REMOTE_CODE / file_name, folder / file_name)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random checkpoint folder per family (plus one for the generic fallback), seeded, on CPU."""
    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = tiny_tokenizer()
    folders = {}
    for name in CONTRACT:
        folder = root / name
        torch.manual_seed(0)
        if name == "generic":
            build_native(GENERIC_TINY, folder)
        elif name in REMOTE_CLASSES:
            build_remote(name, FAMILIES.get(name).tiny_config(), folder)
        else:
            build_native(FAMILIES.get(name).tiny_config(), folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


def config_for(name: str, folder: Path) -> ModelConfig:
    remote = name in FAMILIES and FAMILIES.get(name).needs_remote_code
    return ModelConfig(name_or_path=str(folder), trust_remote_code=remote)


def lora_config(**overrides) -> object:
    from tunellm.methods.lora import LoraMethod

    return LoraMethod(r=4, lora_alpha=8, lora_dropout=0.0, **overrides)


def train_two_steps(model, batch: torch.Tensor) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss = model(input_ids=batch, labels=batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("name", CONTRACT)
def test_family_contract(name: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    config = config_for(name, tiny_models[name])
    model, tokenizer, family = load_model(config, device="cpu")
    assert family is (GENERIC if name == "generic" else FAMILIES.get(name))
    assert tokenizer.pad_token is not None and model.config.pad_token_id is not None
    assert family.template_for(tokenizer, model.config) in TEMPLATES.names()

    wrapped = lora.apply(model, lora_config(), family)
    adapted = {n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    if isinstance(family.lora_targets, tuple):
        assert adapted == set(family.lora_targets)
    else:
        assert adapted and not adapted & {"lm_head", "output_layer"}
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    batch = torch.randint(3, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    train_two_steps(wrapped, batch)
    for n, p in wrapped.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), f"{n} changed: {n in trainable} expected"

    with torch.no_grad():
        logits = wrapped(input_ids=batch).logits
    lora.save_adapter(wrapped, tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved)

    fresh, _, _ = load_model(config, device="cpu")
    reloaded = lora.load_adapter(fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=batch).logits, logits)
    out = reloaded.generate(input_ids=batch[:1, :5], max_new_tokens=3, do_sample=False)
    assert 5 < out.shape[1] <= 8


@pytest.mark.parametrize("name", sorted(REMOTE_CLASSES))
def test_remote_code_refused_unless_trusted(name: str, tiny_models: dict[str, Path], monkeypatch, tmp_path) -> None:
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the remote-code check")

    folder = tiny_models[name]  # baichuan's stand-in has ALiBi, as Baichuan-13B
    if name == "chatglm":  # ChatGLM-6B/2/3 load natively; their int4/int8 releases still need their own code
        folder = tmp_path / "chatglm2-6b-int4"
        shutil.copytree(tiny_models[name], folder)
        raw = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**raw, "quantization_bit": 4}))
    monkeypatch.setattr(load_module, "load_weights", no_weights)
    with pytest.raises(ModelError) as caught:
        load_model(ModelConfig(name_or_path=str(folder)), device="cpu")
    assert caught.value.field == "model.trust_remote_code"
    assert "trust_remote_code=true" in str(caught.value)


def test_every_family_module_is_registered() -> None:
    modules = sorted(p.stem for p in FAMILIES_DIR.glob("*.py") if p.stem not in {"__init__", "base"})
    assert modules == sorted(FAMILIES.names())
    seen: set[str] = set()
    for stem in modules:
        family = importlib.import_module(f"tunellm.models.families.{stem}").FAMILY
        assert family is FAMILIES.get(stem) and family.name == stem
        assert not seen & set(family.model_types), f"{stem} claims a model type another family claims"
        seen |= set(family.model_types)
        tiny = family.tiny_config()
        layers = {tiny.get("num_hidden_layers"), tiny.get("num_layers"), tiny.get("n_layer")}
        assert tiny["hidden_size"] == 64 and 2 in layers
        assert family.fallback_template in TEMPLATES.names()
        assert callable(family.template) or family.template in {"auto", *TEMPLATES.names()}
    assert family_for("no-such-type") is GENERIC


def test_chatglm_versions_and_stop_tokens(tiny_models: dict[str, Path]) -> None:
    from types import SimpleNamespace

    family = FAMILIES.get("chatglm")
    model, tokenizer, _ = load_model(config_for("chatglm", tiny_models["chatglm"]), device="cpu")
    assert family.template_for(tokenizer, SimpleNamespace(position_encoding_2d=True)) == "chatglm"
    assert family.template_for(tokenizer, model.config) == "chatglm2"
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|observation|>"]})
    assert family.template_for(tokenizer, model.config) == "chatglm3"
    family.fix_tokens(tokenizer, model)
    stops = tokenizer.convert_tokens_to_ids(["</s>", "<|user|>", "<|observation|>"])
    assert model.generation_config.eos_token_id == stops


def test_lora_registered_and_options(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    assert METHODS.get("lora") is lora
    model, _, family = load_model(config_for("llama", tiny_models["llama"]), device="cpu")
    wrapped = lora.apply(model, lora_config(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]), family)
    adapted = {n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}
    assert any("lm_head" in n and p.requires_grad for n, p in wrapped.named_parameters())
    lora.save_adapter(wrapped, tmp_path)
    assert any("lm_head" in key for key in load_file(tmp_path / "adapter_model.safetensors"))

    model, _, family = load_model(config_for("llama", tiny_models["llama"]), device="cpu")
    with pytest.raises(ConfigError, match="q_proj"):
        lora.apply(model, lora_config(target_modules=["query"]), family)
    with pytest.raises(ModelError, match="adapter_config.json"):
        lora.load_adapter(model, tmp_path / "missing")


def test_activation_checkpointing_after_apply(tiny_models: dict[str, Path]) -> None:
    model, _, family = load_model(config_for("llama", tiny_models["llama"]), device="cpu")
    wrapped = lora.apply(model, lora_config(), family)
    enable_activation_checkpointing(wrapped)
    assert wrapped.base_model.model.is_activation_checkpointing
    wrapped.train()
    batch = torch.randint(3, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    wrapped(input_ids=batch, labels=batch).loss.backward()
    grads = [p.grad for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_model_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ModelError, match="config.json") as caught:
        load_model(ModelConfig(name_or_path=str(tmp_path)), device="cpu")
    assert "weights.bin" in str(caught.value)
    with pytest.raises(ModelError, match="not found"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "absent")), device="cpu")


def test_dtype_and_attention_choices(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoConfig

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    llama = AutoConfig.from_pretrained(tiny_models["llama"])
    bloom = AutoConfig.from_pretrained(tiny_models["bloom"])
    chatglm = AutoConfig.from_pretrained(tiny_models["chatglm"], trust_remote_code=True)
    assert resolve_attention("auto", llama, cpu, torch.float32) == "sdpa"
    assert resolve_attention("auto", bloom, cpu, torch.float32) == "eager"  # BLOOM has no SDPA path
    assert resolve_attention("auto", chatglm, cpu, torch.float32) is None
    assert resolve_attention("eager", llama, cpu, torch.float32) == "eager"


@pytest.mark.slow
def test_default_model_and_its_gguf_agree() -> None:
    from tunellm.models.default import default_gguf_path

    model, tokenizer, family = load_model(ModelConfig(), device="cpu")
    assert family.name == "llama" and model.config.num_hidden_layers == 30
    assert tokenizer.pad_token == "<|im_end|>" and family.template_for(tokenizer, model.config) == "hf_chat"
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3

    gguf_model, _, gguf_family = load_model(ModelConfig(name_or_path=str(default_gguf_path())), device="cpu")
    assert gguf_family is family and getattr(gguf_model, "hf_quantizer", None) is None
    with torch.no_grad():
        assert torch.equal(gguf_model(input_ids=ids).logits, logits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_dtype_and_device_on_cuda(tiny_models: dict[str, Path]) -> None:
    model, _, family = load_model(config_for("llama", tiny_models["llama"]))
    assert model.device.type == "cuda"
    if torch.cuda.is_bf16_supported():
        assert model.dtype == torch.bfloat16
    wrapped = lora.apply(model, lora_config(), family)
    batch = torch.randint(3, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0)).cuda()
    train_two_steps(wrapped, batch)


def test_ptuning_v2_refuses_remote_code(tiny_models: dict[str, Path]) -> None:
    from tunellm.methods.ptuning_v2 import PTuningV2Method

    model, _, family = load_model(config_for("chatglm", tiny_models["chatglm"]), device="cpu")
    with pytest.raises(ConfigError, match="remote code"):
        METHODS.get("ptuning_v2").apply(model, PTuningV2Method(pre_seq_len=4), family)
