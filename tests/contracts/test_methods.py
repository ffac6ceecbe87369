"""Contract over every registered tuning method, run on the variants each method module supplies
(`contract_variants()`), on tiny random models loaded from folders: apply, two optimizer steps, only the intended
parameters change, save (to the method's declared weight files), reload with the same logits, restore for resume,
and merge parity where the method can merge. A method without variants fails.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from tunellm.config.methods import METHOD_CONFIGS
from tunellm.config.schema import ModelConfig, RunConfig, TrainConfig
from tunellm.errors import ConfigError
from tunellm.methods import METHODS
from tunellm.methods.base import Variant
from tunellm.methods.freeze import FreezeMethod
from tunellm.methods.full import FullMethod
from tunellm.methods.lora import LoraMethod
from tunellm.methods.ptuning_v2 import PTuningV2Method
from tunellm.methods.qlora import QLoraMethod
from tunellm.models.families import FAMILIES
from tunellm.models.families.base import TINY_VOCAB
from tunellm.models.load import load_model
from tunellm.train.checkpoint import load_trainable
from tunellm.train.optim import method_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
METHODS_DIR = Path(importlib.import_module("tunellm.methods").__file__).parent

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
# (method, variant id) for every variant of every registered method
CASES = [(name, id_) for name in METHODS.names() for id_ in getattr(METHODS.get(name), "contract_variants", dict)()]


def build_tiny(family: str, folder: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(FAMILIES.get(family).tiny_config())
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("method_models")
    return {family: build_tiny(family, root / family) for family in ("llama", "glm", "falcon")}


def load_tiny(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def train_two_steps(model, options) -> None:
    # not validated: a method registered outside the package (docs/examples) is not in the config's union
    config = RunConfig.model_construct(method=options, train=TrainConfig(learning_rate=1e-2))
    optimizer = method_optimizer(model, config, METHODS.get(options.name))
    batch = torch.randint(3, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(2):
        loss = model(input_ids=batch, labels=batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def logits_of(model) -> torch.Tensor:
    batch = torch.randint(3, TINY_VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=batch).logits.float()


def check_variant(method, variant: Variant, folder: Path, tmp_path: Path) -> None:
    """The contract for one variant of `method` (a METHODS plug-in) on the tiny llama model saved in `folder`."""
    options, should_train = variant.options, variant.trains
    assert isinstance(options, method.Config)
    family = FAMILIES.get("llama")
    torch.manual_seed(0)
    model = method.apply(load_tiny(folder), options, family)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(should_train(n) for n in trainable), sorted(trainable)[:5]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_two_steps(model, options)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), f"{n} changed: {n in trainable} expected"
    trained = logits_of(model)

    method.save(model, tmp_path)
    written = {p.name for p in tmp_path.glob("*.safetensors")}
    assert written and written <= set(method.weight_files), (written, method.weight_files)
    assert not list(tmp_path.glob("*.bin"))
    reloaded = method.load(load_tiny(folder), tmp_path)
    tolerance = {"atol": variant.tolerance, "rtol": variant.tolerance}
    torch.testing.assert_close(logits_of(reloaded), trained, **tolerance)

    torch.manual_seed(0)  # resume re-applies the method to a fresh base, then restores the trained part
    resumed = method.apply(load_tiny(folder), options, family)
    load_trainable(resumed, tmp_path, method)
    torch.testing.assert_close(logits_of(resumed), trained, atol=0, rtol=0)

    if method.supports_merge:
        merged = method.merge(reloaded)
        assert not any("lora_" in n or "prompt_encoder" in n for n, _ in merged.named_parameters())
        merge_tolerance = {"atol": max(1e-4, variant.tolerance), "rtol": max(1e-4, variant.tolerance)}
        torch.testing.assert_close(logits_of(merged), trained, **merge_tolerance)
    else:
        with pytest.raises(ConfigError, match="cannot be merged"):
            method.merge(reloaded)


@pytest.mark.parametrize(("name", "variant"), CASES, ids=[f"{name}:{variant}" for name, variant in CASES])
def test_method_contract_on_llama(name: str, variant: str, tiny_folders: dict[str, Path], tmp_path: Path) -> None:
    method = METHODS.get(name)
    check_variant(method, method.contract_variants()[variant], tiny_folders["llama"], tmp_path)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_supplies_contract_variants(name: str) -> None:
    """A method cannot skip the contract: it must name variants, of its own options, that the config accepts."""
    method = METHODS.get(name)
    assert callable(getattr(method, "contract_variants", None)), f"method {name} has no contract_variants()"
    variants = method.contract_variants()
    assert variants, f"method {name} supplies no contract variants"
    for variant in variants.values():
        assert isinstance(variant, Variant) and isinstance(variant.options, method.Config)
        assert variant.options.name == name
        assert RunConfig(method=variant.options.model_dump()).method == variant.options
    assert method.weight_files and all(isinstance(file, str) for file in method.weight_files)


@pytest.mark.parametrize("family", ["glm", "falcon"])
def test_ptuning_v2_trains_and_reloads_on_other_families(family: str, tiny_folders, tmp_path: Path) -> None:
    options = PTuningV2Method(pre_seq_len=4, prefix_projection=True, prefix_hidden_size=16)
    method = METHODS.get("ptuning_v2")
    model = method.apply(load_tiny(tiny_folders[family]), options, FAMILIES.get(family))
    train_two_steps(model, options)
    trained = logits_of(model)
    method.save(model, tmp_path)
    reloaded = method.load(load_tiny(tiny_folders[family]), tmp_path)
    torch.testing.assert_close(logits_of(reloaded), trained, atol=0, rtol=0)
    out = reloaded.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 6


def test_loraplus_gives_b_matrices_the_larger_rate(tiny_folders) -> None:
    options = LoraMethod(**LORA, loraplus_lr_ratio=16)
    model = METHODS.get("lora").apply(load_tiny(tiny_folders["llama"]), options, FAMILIES.get("llama"))
    config = RunConfig(method=options, train=TrainConfig(learning_rate=1e-3))
    optimizer = method_optimizer(model, config, METHODS.get("lora"))
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert {rate[id(p)] for n, p in names.items() if "lora_B" in n} == {1e-3 * 16}
    assert {rate[id(p)] for n, p in names.items() if "lora_A" in n} == {1e-3}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # the logged lr is the base rate


def test_pissa_checkpoint_is_plain_lora_on_the_original_base(tiny_folders, tmp_path: Path) -> None:
    import json

    options = LoraMethod(**LORA, init_lora_weights="pissa")
    model = METHODS.get("lora").apply(load_tiny(tiny_folders["llama"]), options, FAMILIES.get("llama"))
    METHODS.get("lora").save(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True and saved["r"] == 8  # rank 2r, no base change needed
    raw = json.loads((tmp_path / "state" / "pissa" / "adapter_config.json").read_text())
    assert raw["r"] == 4


def test_freeze_finds_the_decoder_layers_of_every_native_family(tmp_path: Path) -> None:
    from tunellm.methods.base import decoder_layers

    for name in FAMILIES.names():
        family = FAMILIES.get(name)
        if family.needs_remote_code:
            continue
        model = load_tiny(build_tiny(name, tmp_path / name))
        _, layers = decoder_layers(model, "method.trainable_layers", "")
        assert len(layers) == 2, name
        METHODS.get("freeze").apply(model, FreezeMethod(trainable_layers=1), family)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all(".1." in n for n in trainable), (name, trainable[:3])


@pytest.mark.parametrize("family", ["llama", "glm", "falcon"])
def test_lora_on_the_top_layers_stops_the_backward_pass_below_them(family: str, tiny_folders) -> None:
    from tunellm.methods.base import decoder_layers

    options = LoraMethod(**LORA, layers=1)
    model = METHODS.get("lora").apply(load_tiny(tiny_folders[family]), options, FAMILIES.get(family))
    adapted = [n for n, p in model.named_parameters() if p.requires_grad]
    assert adapted and all("lora_" in n and ".1." in n for n in adapted), adapted[:3]
    _, layers = decoder_layers(model, "method.layers", "")
    reached = []
    for index, layer in enumerate(layers):
        layer.register_full_backward_hook(lambda *_, index=index: reached.append(index))
    batch = torch.randint(3, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    model(input_ids=batch, labels=batch).loss.backward()
    assert reached == [1]  # the lower layer builds no graph: that is the time saved


def test_lora_layers_beyond_the_model_name_the_option(tiny_folders) -> None:
    with pytest.raises(ConfigError, match="layers=5 but the model has 2 decoder layers") as caught:
        METHODS.get("lora").apply(load_tiny(tiny_folders["llama"]), LoraMethod(**LORA, layers=5), FAMILIES.get("llama"))
    assert caught.value.field == "method.layers"


def test_freeze_errors_name_the_option(tiny_folders) -> None:
    model = load_tiny(tiny_folders["llama"])
    with pytest.raises(ConfigError, match="has 2 layers"):
        METHODS.get("freeze").apply(model, FreezeMethod(trainable_layers=5), FAMILIES.get("llama"))
    with pytest.raises(ConfigError, match="no parameter name contains mlpp"):
        METHODS.get("freeze").apply(model, FreezeMethod(trainable_modules=["mlpp"]), FAMILIES.get("llama"))


def test_qlora_load_options_reach_from_pretrained_once(tiny_folders, default_tokenizer, monkeypatch) -> None:
    from tunellm.models import load as load_module

    seen = {}

    def fake_load(location, config, dtype, options):
        seen.update(options, dtype=dtype)
        return load_tiny(tiny_folders["llama"])

    monkeypatch.setattr(load_module, "load_weights", fake_load)
    monkeypatch.setattr(load_module, "load_tokenizer", lambda config: default_tokenizer)
    method = METHODS.get("qlora")
    options = pytest.importorskip("transformers").BitsAndBytesConfig and method.load_options(QLoraMethod(**LORA))
    load_model(ModelConfig(name_or_path=str(tiny_folders["llama"])), device="cpu", load_options=options)
    assert seen["dtype"] is torch.bfloat16 and seen["quantization_config"].load_in_4bit
    assert (
        seen["quantization_config"].bnb_4bit_quant_type == "nf4"
        and seen["quantization_config"].bnb_4bit_use_double_quant
    )


def test_ptuning_v2_refuses_gradient_checkpointing() -> None:
    from tunellm.config.load import load_config

    config = load_config(None, ["method=ptuning_v2", "gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match="drop the prefix cache") as caught:
        METHODS.get("ptuning_v2").check(config)
    assert caught.value.field == "train.gradient_checkpointing"


def test_qlora_stops_before_anything_loads_without_cuda(tmp_path: Path, monkeypatch) -> None:
    from tunellm.config.load import load_config
    from tunellm.train import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    config = load_config(None, [f"data.train={data}", f"output_dir={tmp_path / 'out'}", "method=qlora"])
    assert isinstance(config.method, QLoraMethod) and config.method.bits == 4 and config.method.double_quant
    monkeypatch.setattr(run, "load_tokenizer_and_template", lambda *a: pytest.fail("loaded before the check"))
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as caught:
        run.train_from_config(config)
    assert caught.value.field == "method.name" and "method=lora" in str(caught.value)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_a_quantized_base_through_tunellm_train(bits, tiny_llama_dir, tmp_path: Path, monkeypatch) -> None:
    """bitsandbytes >= 0.49 also runs 4- and 8-bit layers on the CPU, so the whole QLoRA path (quantized load, LoRA
    on top, paged 8-bit AdamW, checkpoint, resume, reload for inference) runs here with only the CUDA check lifted."""
    pytest.importorskip("bitsandbytes")
    from tunellm.config.load import load_config
    from tunellm.infer.load import load_for_inference
    from tunellm.methods import qlora
    from tunellm.train.run import train_from_config

    monkeypatch.setattr(qlora, "check", lambda config: None)
    layers: set[str] = set()
    apply = qlora.apply

    def apply_and_record(model, options, family):  # the layer classes of the base as it loaded
        layers.update(type(module).__name__ for module in model.modules())
        return apply(model, options, family)

    monkeypatch.setattr(qlora, "apply", apply_and_record)
    data = tmp_path / "train.jsonl"
    rows = [{"instruction": f"add {i} and 2", "output": str(i + 2)} for i in range(8)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    keys = [f"data.train={data}", f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"]
    keys += [f"model.name_or_path={tiny_llama_dir}", "method=qlora", f"bits={bits}", "r=4", "max_steps=3"]
    keys += ["logging_steps=1", "learning_rate=1e-2", "report_to=none", "save_steps=3"]
    result = train_from_config(load_config(None, keys))
    assert result.global_step == 3 and result.train_loss is not None
    assert {"Linear4bit" if bits == 4 else "Linear8bitLt"} <= layers  # the base really trained quantized
    step = tmp_path / "out" / "step-3"
    assert "__bnb_optimizer_quant_state__" in (step / "state" / "optimizer.json").read_text()
    resumed = train_from_config(load_config(None, [*keys, "max_steps=4"]))  # the 8-bit optimizer state reloads
    assert resumed.global_step == 4
    loaded = load_for_inference(step, device="cpu")  # the base loads unquantized for inference
    assert not any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in loaded.model.modules())
    assert any("lora_" in n for n, _ in loaded.model.named_parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs CUDA")
def test_qlora_trains_a_4bit_base_on_cuda(tiny_folders, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    options = QLoraMethod(**LORA)
    method = METHODS.get("qlora")
    method.check(RunConfig(method=options))
    model_config = ModelConfig(name_or_path=str(tiny_folders["llama"]))
    model, _, family = load_model(model_config, device="cuda", load_options=method.load_options(options))
    assert any("4bit" in type(m).__name__ for m in model.modules())
    model = method.apply(model, options, family)
    train_two_steps(model.cuda(), options)


def test_every_method_module_is_registered_with_its_config() -> None:
    modules = sorted(p.stem for p in METHODS_DIR.glob("*.py") if p.stem not in {"__init__", "base"})
    assert modules == sorted(METHODS.names())
    names = {config.model_fields["name"].default: config for config in METHOD_CONFIGS}
    assert list(names) == METHODS.names()  # the config's union is the registry, in its order
    for stem in modules:
        method = METHODS.get(stem)
        assert method.Config is names[stem]
        assert isinstance(method.supports_merge, bool)
        for hook in ("apply", "save", "load", "merge"):
            assert callable(getattr(method, hook)), (stem, hook)


def test_method_switches_from_the_command_line(tmp_path: Path) -> None:
    from tunellm.config.load import load_config

    path = tmp_path / "run.yaml"
    path.write_text("method:\n  name: lora\n  r: 16\n  lora_alpha: 32\n")
    assert load_config(path, ["method=ptuning_v2"]).method == PTuningV2Method()
    assert load_config(path, ["method=freeze", "trainable_layers=3"]).method == FreezeMethod(trainable_layers=3)
    assert load_config(path, ["method=qlora"]).method.r == 16  # the LoRA keys carry over to QLoRA
    with pytest.raises(ConfigError, match="method.r: not an option of method full"):
        load_config(path, ["method=full", "r=8"])


def test_full_keeps_fp32_master_weights_unless_pure_bf16(tiny_folders) -> None:
    from transformers import AutoModelForCausalLM

    half = AutoModelForCausalLM.from_pretrained(tiny_folders["llama"], dtype=torch.bfloat16)
    assert {p.dtype for p in METHODS.get("full").apply(half, FullMethod(), None).parameters()} == {torch.float32}
    pure = METHODS.get("full").apply(load_tiny(tiny_folders["llama"]), FullMethod(pure_bf16=True), None)
    assert {p.dtype for p in pure.parameters()} == {torch.bfloat16}
