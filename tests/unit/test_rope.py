"""RoPE scaling from `model.rope_scaling`: each type changes the rotary embedding, a tiny llama trains on rows
longer than its native length, the checkpoint reloads scaled, and models that cannot take it say so."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import yaml
from transformers import AutoConfig, BloomConfig, FalconConfig, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from tunellm.config.load import load_config
from tunellm.config.schema import RopeScaling
from tunellm.errors import ConfigError, ModelError
from tunellm.models.families.base import llama_style_tiny
from tunellm.models.load import check_context
from tunellm.models.rope import apply_rope_scaling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NATIVE = 64


def tiny_config(**overrides) -> LlamaConfig:
    fields = llama_style_tiny("llama", max_position_embeddings=NATIVE, **overrides)
    fields.pop("model_type")
    return LlamaConfig(**fields)


def rotary(scaling: RopeScaling | None) -> tuple[LlamaRotaryEmbedding, LlamaConfig]:
    config = tiny_config()
    if scaling is not None:
        apply_rope_scaling(config, scaling, "llama")
    return LlamaRotaryEmbedding(config), config


def cos_sin(embedding: LlamaRotaryEmbedding, length: int) -> torch.Tensor:
    cos, sin = embedding(torch.zeros(1, 1, 8), torch.arange(length)[None])
    return torch.cat([cos, sin], dim=-1)


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "llama3"])
def test_each_type_changes_the_rotary_embedding(kind):
    plain, _ = rotary(None)
    scaled, config = rotary(RopeScaling(type=kind, factor=4))
    assert config.rope_parameters["rope_type"] == kind and config.rope_parameters["factor"] == 4
    if kind == "dynamic":  # the same within the native length, rescaled past it
        assert config.max_position_embeddings == NATIVE
        assert torch.equal(cos_sin(scaled, NATIVE), cos_sin(plain, NATIVE))
        assert not torch.allclose(cos_sin(scaled, 4 * NATIVE), cos_sin(plain, 4 * NATIVE))
        return
    assert config.max_position_embeddings == 4 * NATIVE
    assert not torch.allclose(cos_sin(scaled, 4 * NATIVE), cos_sin(plain, 4 * NATIVE))
    if kind == "linear":
        assert torch.allclose(scaled.inv_freq, plain.inv_freq / 4)
    else:  # the fastest frequency is kept, the slowest is divided by the factor
        assert config.rope_parameters["original_max_position_embeddings"] == NATIVE
        assert torch.isclose(scaled.inv_freq[0], plain.inv_freq[0])
        assert torch.isclose(scaled.inv_freq[-1], plain.inv_freq[-1] / 4)
    expected_attention = 0.1 * math.log(4) + 1 if kind == "yarn" else 1.0
    assert scaled.attention_scaling == pytest.approx(expected_attention)


def test_type_options_reach_the_config():
    _, llama3 = rotary(RopeScaling(type="llama3", factor=8, low_freq_factor=2, high_freq_factor=6))
    assert llama3.rope_parameters["low_freq_factor"] == 2 and llama3.rope_parameters["high_freq_factor"] == 6
    _, yarn = rotary(RopeScaling(type="yarn", factor=2, beta_fast=16, original_max_position_embeddings=32))
    assert yarn.rope_parameters["beta_fast"] == 16 and "beta_slow" not in yarn.rope_parameters
    assert yarn.rope_parameters["original_max_position_embeddings"] == 32 and yarn.max_position_embeddings == 64


def test_a_model_saved_scaled_reloads_once_scaled(tmp_path):
    config = tiny_config()
    apply_rope_scaling(config, RopeScaling(type="linear", factor=4), "llama")
    config.save_pretrained(tmp_path)  # as a full-model checkpoint or a merge writes it
    again = AutoConfig.from_pretrained(tmp_path)
    apply_rope_scaling(again, RopeScaling(type="linear", factor=4), "llama")
    assert again.max_position_embeddings == 4 * NATIVE and again.rope_parameters["factor"] == 4
    with pytest.raises(ModelError, match=r"already scales RoPE \(linear, factor 4.0\)"):
        apply_rope_scaling(again, RopeScaling(type="yarn", factor=2), "llama")


class RemoteCodeConfig:
    """Stands in for a config class loaded from a checkpoint's own code (ChatGLM, Baichuan)."""

    model_type = "chatglm"


@pytest.mark.parametrize(
    ("config", "family", "reason"),
    [
        (BloomConfig(n_layer=1, n_head=2, hidden_size=16), "bloom", "no rotary position embeddings"),
        (FalconConfig(num_hidden_layers=1, alibi=True), "falcon", "uses ALiBi"),
        (RemoteCodeConfig(), "chatglm", "ships with the checkpoint"),
    ],
)
def test_models_without_rope_scaling_are_refused(config, family, reason):
    with pytest.raises(ModelError, match=reason) as caught:
        apply_rope_scaling(config, RopeScaling(type="linear", factor=2), family)
    assert caught.value.field == "model.rope_scaling" and f"the {family} family" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["type=ntk", "factor=2"], r"rope_scaling.type = 'ntk': Input should be 'linear', 'dynamic', 'yarn'"),
        (["type=linear", "factor=1"], r"rope_scaling.factor = 1: Input should be greater than 1"),
        (["type=linear"], r"rope_scaling.factor = .*Field required"),
        (["type=linear", "factor=2", "beta_fast=8"], r"type linear takes no beta_fast; only yarn does"),
        (["type=llama3", "factor=8", "low_freq_factor=5"], r"high_freq_factor must be greater"),
    ],
)
def test_bad_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"model.rope_scaling.{item}" for item in overrides])


def test_settings_come_from_yaml_or_dotted_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  rope_scaling: {type: linear, factor: 2.0}\n")
    assert load_config(path).model.rope_scaling == RopeScaling(type="linear", factor=2)
    assert load_config(None, ["rope_scaling.type=yarn", "rope_scaling.factor=4"]).model.rope_scaling.type == "yarn"
    assert load_config(path, ["model.rope_scaling=none"]).model.rope_scaling is None
    path.write_text("model:\n  rope_scaling: null\n")  # as config.yaml in a checkpoint, which dotted keys cannot enter
    assert load_config(path, ["model.rope_scaling={type: yarn, factor: 4}"]).model.rope_scaling.factor == 4
    with pytest.raises(ConfigError, match=r"give a mapping, e.g. \{type: linear, factor: 2\}"):
        load_config(None, ["model.rope_scaling=linear"])


@pytest.fixture(scope="module")
def short_llama_dir(tmp_path_factory, default_tokenizer):
    """A tiny llama that knows only 64 positions, with the default tokenizer beside it."""
    folder = tmp_path_factory.mktemp("short-llama")
    tokenizer = default_tokenizer
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **ids)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_training_input_check_refuses_scaling_a_model_without_rope(tmp_path):
    from tunellm.train.run import check_inputs

    BloomConfig(n_layer=1, n_head=2, hidden_size=16).save_pretrained(tmp_path / "bloom")  # config only: no weights
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    keys = [f"data.train={data}", f"model.name_or_path={tmp_path / 'bloom'}", f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(ModelError, match="RoPE scaling does not apply to the bloom family"):
        check_inputs(load_config(None, [*keys, "rope_scaling.type=linear", "rope_scaling.factor=2"]))


def test_cutoff_past_the_native_length_warns_with_the_factor_to_use(short_llama_dir, caplog):
    model = [f"model.name_or_path={short_llama_dir}"]
    with caplog.at_level(logging.WARNING, logger="tunellm"):
        check_context(load_config(None, [*model, "cutoff_len=200"]).model, 200)
        check_context(load_config(None, [*model, "rope_scaling.type=yarn", "rope_scaling.factor=2"]).model, 200)
        check_context(load_config(None, [*model, "rope_scaling.type=linear", "rope_scaling.factor=4"]).model, 200)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "passes the 64 positions the model was trained on" in messages[0]
    assert "model.rope_scaling='{type: linear, factor: 4}'" in messages[0]
    assert "passes the 128 positions model.rope_scaling gives; set model.rope_scaling.factor=4" in messages[1]


def test_a_tiny_model_trains_past_its_length_and_reloads_scaled(short_llama_dir, default_tokenizer, tmp_path):
    from tunellm.infer.load import load_for_inference
    from tunellm.train.run import train_from_config

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau"
    rows = [{"instruction": f"Recite {n}.", "output": " ".join([words] * 7)} for n in range(4)]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert len(default_tokenizer(rows[0]["output"])["input_ids"]) > 2 * NATIVE
    keys = [
        f"model.name_or_path={short_llama_dir}", f"data.train={data}", f"cache_dir={tmp_path / 'cache'}",
        "cutoff_len=256", "model.rope_scaling.type=linear", "model.rope_scaling.factor=4",
        f"output_dir={tmp_path / 'out'}", "max_steps=3", "per_device_train_batch_size=2", "logging_steps=1",
        "learning_rate=1e-3", "report_to=none", "resume=never",
    ]  # fmt: skip
    result = train_from_config(load_config(None, keys))
    losses = [entry["loss"] for entry in result.history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    saved = yaml.safe_load((result.last_checkpoint / "config.yaml").read_text())
    assert saved["model"]["rope_scaling"]["type"] == "linear" and saved["model"]["rope_scaling"]["factor"] == 4
    loaded = load_for_inference(result.last_checkpoint, device="cpu")
    config = loaded.model.config
    assert config.rope_parameters["rope_type"] == "linear" and config.max_position_embeddings == 4 * NATIVE
    plain, _ = rotary(None)
    assert torch.allclose(loaded.model.base_model.model.model.rotary_emb.inv_freq, plain.inv_freq / 4)
