"""Baichuan-7B and Baichuan2-7B load as native llama: tiny random checkpoints in the original layout (W_pack,
the original names, rotary buffers, .bin shards, tokenizer.model) against a forward pass written from the
published architecture (tests/fixtures/baichuan_reference.py); the 13B ALiBi models are refused."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from tunellm.config.schema import ModelConfig
from tunellm.errors import ModelError
from tunellm.models.convert import native
from tunellm.models.load import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REFERENCE_FILE = Path(__file__).parents[1] / "fixtures" / "baichuan_reference.py"
CONFIG = {
    "model_type": "baichuan", "architectures": ["BaichuanForCausalLM"], "vocab_size": 2048, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256,
    "model_max_length": 256, "rms_norm_eps": 1e-6, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    "pad_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "float32",
    "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                 "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
}  # fmt: skip


def reference_module():
    spec = importlib.util.spec_from_file_location("baichuan_reference", REFERENCE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELLM_HOME", str(tmp_path_factory.getbasetemp() / "tunellm_home"))


def original_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.1

    width, inner, vocab = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    state = {"model.embed_tokens.weight": rand(vocab, width), "model.norm.weight": 1 + rand(width)}
    state["lm_head.weight"] = rand(vocab, width) * 5  # rows far from unit length, so NormHead matters
    for layer in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        state[p + "self_attn.W_pack.weight"] = rand(3 * width, width)
        state[p + "self_attn.o_proj.weight"] = rand(width, width)
        state[p + "self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
        state[p + "mlp.gate_proj.weight"] = rand(inner, width)
        state[p + "mlp.up_proj.weight"] = rand(inner, width)
        state[p + "mlp.down_proj.weight"] = rand(width, inner)
        state[p + "input_layernorm.weight"] = 1 + rand(width)
        state[p + "post_attention_layernorm.weight"] = 1 + rand(width)
    return state


def save_original(folder: Path, state: dict, tokenizer_folder: Path, with_code: bool, **overrides) -> Path:
    folder.mkdir(parents=True)
    config = {key: value for key, value in {**CONFIG, **overrides}.items() if value is not None}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / "pytorch_model.bin")
    if with_code:  # Baichuan2 ships NormHead in its modeling file
        shutil.copy(REFERENCE_FILE, folder / "modeling_baichuan.py")
    shutil.copy(tokenizer_folder / "tokenizer.model", folder / "tokenizer.model")
    tokenizer_config = {
        "tokenizer_class": "BaichuanTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "bos_token": {"content": "<s>", "__type": "AddedToken"}, "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<unk>", "add_bos_token": False, "model_max_length": 256,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


@pytest.mark.parametrize("version", ["Baichuan-7B", "Baichuan2-7B"])
def test_logits_match_the_published_architecture(version: str, sentencepiece_folders, tmp_path: Path) -> None:
    state = original_state()
    baichuan2 = version == "Baichuan2-7B"
    folder = save_original(tmp_path / version, state, sentencepiece_folders["baichuan"], with_code=baichuan2)
    model, tokenizer, family = load_model(ModelConfig(name_or_path=str(folder)), device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and family.name == "llama"
    assert family.template_for(tokenizer, model.config) == "baichuan"
    head_norms = model.lm_head.weight.norm(dim=-1)
    assert torch.allclose(head_norms, torch.ones_like(head_norms)) == baichuan2

    reference = reference_module()
    texts = ["你好，世界", "def f(x):\n    return x * 2", "<reserved_106>写一首诗<reserved_107>"]
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
        with torch.no_grad():
            expected = reference.forward(state, CONFIG, ids, norm_head=baichuan2)
            got = model(input_ids=ids).logits
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        if baichuan2:  # the normalised head matters: the unnormalised product differs
            assert not torch.allclose(reference.forward(state, CONFIG, ids, norm_head=False), expected, atol=1e-2)
    marker = tokenizer("<reserved_106>", add_special_tokens=False).input_ids
    assert len(marker) == 1


def test_fused_qkv_split_equals_separate_projections(sentencepiece_folders, tmp_path: Path) -> None:
    state = original_state(seed=1)
    folder = save_original(tmp_path / "b", state, sentencepiece_folders["baichuan"], with_code=False)
    model, _, _ = load_model(ModelConfig(name_or_path=str(folder)), device="cpu")
    x = torch.randn(3, CONFIG["hidden_size"])
    attention = model.model.layers[1].self_attn
    fused = x @ state["model.layers.1.self_attn.W_pack.weight"].T
    separate = torch.cat([attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)], dim=-1)
    torch.testing.assert_close(separate, fused.detach(), atol=1e-6, rtol=0)


def test_alibi_models_are_refused_unless_trusted(sentencepiece_folders, tmp_path: Path) -> None:
    # Baichuan-13B's config has no max_position_embeddings (ALiBi); with no code to read, that decides
    folder = save_original(
        tmp_path / "13b", original_state(), sentencepiece_folders["baichuan"], False, max_position_embeddings=None
    )
    with pytest.raises(ModelError, match="ALiBi") as caught:
        load_model(ModelConfig(name_or_path=str(folder)), device="cpu")
    assert caught.value.field == "model.trust_remote_code" and "trust_remote_code=true" in str(caught.value)
    assert native.native_location(str(folder), trust_remote_code=True) == str(folder)


@pytest.mark.parametrize("version", ["Baichuan-7B", "Baichuan2-7B"])
def test_weights_go_back_to_the_original_layout(version: str, sentencepiece_folders, tmp_path: Path) -> None:
    from tunellm.models.convert.weights import read_state_dict

    state = original_state(seed=2)
    baichuan2 = version == "Baichuan2-7B"
    folder = save_original(tmp_path / version, state, sentencepiece_folders["baichuan"], with_code=baichuan2)
    back = tmp_path / "back"
    native.write_original(Path(native.native_location(str(folder), False)), back)
    written = read_state_dict(back)
    assert written.keys() == state.keys()
    for name, tensor in state.items():
        if name == "lm_head.weight" and baichuan2:  # stored normalised: NormHead computes the same from it
            torch.testing.assert_close(written[name], torch.nn.functional.normalize(tensor, dim=-1))
        else:
            assert torch.equal(written[name], tensor), name
    assert (back / "modeling_baichuan.py").is_file() == baichuan2
    assert json.loads((back / "config.json").read_text())["model_type"] == "baichuan"
