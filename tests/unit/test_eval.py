"""`tunellm eval` on a tiny random llama and a LoRA checkpoint built in a temporary folder.

The scores of a random model are noise; what is checked is what the numbers are: the loss equals the
training loop's eval_loss, the base model seen through `--compare` is the base model, the differences
are differences, the files hold the keys, and the dev scorer feeds the best-checkpoint choice.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM
from typer.testing import CliRunner

from tunellm.cli.main import app
from tunellm.config.schema import EvalConfig, GenerateConfig, RunConfig, TrainConfig
from tunellm.data.tokenize import TokenizeOptions, tokenize_conversations
from tunellm.errors import ConfigError
from tunellm.evaluate import evaluate_model, make_dev_scorer
from tunellm.evaluate.run import read_eval_data
from tunellm.infer.generate import SamplingOptions
from tunellm.infer.load import load_for_inference
from tunellm.methods import lora
from tunellm.methods.lora import LoraMethod
from tunellm.models.families import family_for
from tunellm.train import fit
from tunellm.train.loop import evaluate as loop_evaluate
from tunellm.train.strategy import make_strategy

TRIPLE = {
    "predicate": "主演",
    "object_type": "人物",
    "subject_type": "影视作品",
    "object": "周星驰",
    "subject": "喜剧之王",
}
IE = f"```json\n{json.dumps([TRIPLE], ensure_ascii=False)}\n```"
CONTEXT_TARGET = [
    {"context": "Instruction: 抽取。\nInput: 《喜剧之王》由周星驰主演。\nAnswer: ", "target": IE},
    {"context": "Instruction: 抽取。\nInput: 周星驰主演了喜剧之王。\nAnswer: ", "target": IE},
    {"context": "Instruction: 分类。\nInput: 苹果挺甜的。\nAnswer: ", "target": '["水果"]'},
    {"context": "Instruction: 分类。\nInput: 酒店很干净。\nAnswer: ", "target": '["酒店"]'},
    {"context": "Question: say hello\nAnswer: ", "target": "hello there, friend"},
]
PROMPTCBLUE = [
    {
        "input": f"“{a}”，“{b}”。\n这两句话意思相同吗？\n选项：是的，不是\n答：",
        "target": target,
        "answer_choices": ["是的", "不是"],
        "task_type": "cls",
        "task_dataset": "CHIP-STS",
        "sample_id": f"s{i}",
    }
    for i, (a, b, target) in enumerate([("头疼", "头痛", "是的"), ("感冒", "骨折", "不是"), ("发烧", "发热", "是的")])
]
BASELINE_KEYS = {"majority_accuracy", "random_accuracy", "beats_majority", "macro_f1"}
EXPECTED_KEYS = {"rows", "scored", "loss", "ppl", "exact_match", "accuracy", "answer_parse_rate", *BASELINE_KEYS}
EXPECTED_KEYS |= {"ie_f1", "ie_precision", "ie_recall", "ie_parse_rate", "bleu4", "rouge1", "rouge2", "rougeL"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir, tiny_lora_checkpoint) -> dict[str, Path]:
    """A tiny base model folder, a step-2 LoRA checkpoint on it, and two data files."""
    root = tmp_path_factory.mktemp("eval")
    base, checkpoint = tiny_llama_dir, tiny_lora_checkpoint
    data = write_jsonl(root / "mixed.jsonl", [*CONTEXT_TARGET, {"context": "Question: no answer\nAnswer: "}])
    return {"base": base, "checkpoint": checkpoint, "data": data, "cblue": write_jsonl(root / "sts.json", PROMPTCBLUE)}


@pytest.fixture(scope="module")
def loaded(run):
    return load_for_inference(run["checkpoint"], device="cpu")


def test_eval_compare_end_to_end(run, tmp_path):
    out = tmp_path / "out"
    args = ["eval", str(run["data"]), str(run["cblue"]), "--adapter", str(run["checkpoint"]), "--compare"]
    args += ["--output", str(out), "--max-new-tokens", "6", "--batch-size", "3", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| task | metric | base | step-2 | Δ step-2 - base |" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "base",
        "comparison.json",
        "metrics.md",
        "metrics.png",
        "step-2",
    ]
    assert (out / "metrics.md").read_text() in result.stdout
    for name in ("base/metrics.json", "step-2/predictions.jsonl", "comparison.json", "metrics.png"):
        assert str(out / name) in result.output  # says where each file went
    assert (out / "metrics.png").read_bytes().startswith(b"\x89PNG")
    metrics = {name: json.loads((out / name / "metrics.json").read_text()) for name in ("base", "step-2")}
    tuned = metrics["step-2"]
    assert set(tuned["overall"]) == EXPECTED_KEYS and tuned["overall"]["rows"] == 9
    assert set(tuned["groups"]) == {"CHIP-STS", "classification", "extraction", "text", "unscored"}
    assert tuned["overall"]["scored"] == {
        "perplexity": 8,
        "exact_match": 8,
        "choice_accuracy": 5,
        "ie_f1": 2,
        "bleu": 1,
        "rouge": 1,
    }
    assert set(tuned["groups"]["CHIP-STS"]) == {"rows", "scored", "loss", "ppl", "exact_match"} | {
        "accuracy",
        "answer_parse_rate",
        *BASELINE_KEYS,
    }
    diffs = json.loads((out / "comparison.json").read_text())["differences"]["step-2"]
    for task in ("overall", "extraction"):
        for key, value in diffs[task].items():
            before = metrics["base"]["overall"] if task == "overall" else metrics["base"]["groups"][task]
            after = tuned["overall"] if task == "overall" else tuned["groups"][task]
            assert value == pytest.approx(after[key] - before[key], abs=2e-6)
    assert metrics["base"]["overall"]["loss"] != tuned["overall"]["loss"]
    lines = [json.loads(line) for line in (out / "step-2" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and {"input", "reference", "output", "kind", "group", "loss"} <= set(lines[0])
    assert lines[0]["reference"] == IE and lines[5]["reference"] is None and lines[5]["kind"] == "none"
    assert lines[6]["extra"]["task_dataset"] == "CHIP-STS" and lines[6]["kind"] == "choice"


def test_loss_equals_the_training_loops_eval_loss(run, loaded):
    conversations = read_eval_data([str(run["data"])], loaded.config)
    result = evaluate_model(loaded, conversations, SamplingOptions(max_new_tokens=2), label="x", batch_size=2)
    answered = [c for c in conversations if c.has_response]
    options = TokenizeOptions.from_config(loaded.config.data)
    samples = tokenize_conversations(answered, loaded.tokenizer, loaded.template, options)
    expected = loop_evaluate(make_strategy(TrainConfig()), loaded.model, samples, 3, pad_id=2)["eval_loss"]
    assert result.overall["loss"] == pytest.approx(expected, rel=1e-5)


def test_the_base_seen_through_compare_is_the_base_model(run, tmp_path):
    out = tmp_path / "out"
    common = [str(run["data"]), "--max-new-tokens", "5", "--no-progress"]
    result = CliRunner().invoke(
        app, ["eval", *common, "--adapter", str(run["checkpoint"]), "--compare", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    alone = CliRunner().invoke(app, ["eval", *common, "--adapter", str(run["base"]), "-o", str(tmp_path / "alone")])
    assert alone.exit_code == 0, alone.output
    base = json.loads((out / "base" / "metrics.json").read_text())
    single = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    assert base["overall"] == single["overall"] and base["groups"] == single["groups"]
    files = [out / "base" / "predictions.jsonl", tmp_path / "alone" / "predictions.jsonl"]
    outputs = [[json.loads(line)["output"] for line in file.read_text().splitlines()] for file in files]
    assert outputs[0] == outputs[1]
    assert "| task | rows | loss | ppl |" in alone.stdout  # one model: a row per task


def test_compare_needs_an_adapter_and_vllm_is_optional(run):
    result = CliRunner().invoke(app, ["eval", str(run["data"]), "--compare"])
    assert isinstance(result.exception, ConfigError) and "--compare needs an --adapter" in str(result.exception)
    if importlib.util.find_spec("vllm") is None:
        result = CliRunner().invoke(app, ["eval", str(run["data"]), "--backend", "vllm"])
        assert isinstance(result.exception, ConfigError) and "vLLM is not installed" in str(result.exception)


def test_the_dev_scorer_chooses_the_best_checkpoint_by_a_task_metric(run, loaded, tmp_path):
    config = RunConfig(
        train=TrainConfig(
            output_dir=str(tmp_path / "train"),
            max_steps=2,
            eval_steps=1,
            per_device_train_batch_size=2,
            report_to=[],
            resume="never",
            best_metric="accuracy",
        ),
        eval=EvalConfig(max_rows=3),
        generate=GenerateConfig(max_new_tokens=4),
    )
    conversations = read_eval_data([str(run["data"])], loaded.config)
    scorer = make_dev_scorer(config, loaded.tokenizer, loaded.template, conversations)
    assert scorer is not None
    options = TokenizeOptions.from_config(config.data)
    data = tokenize_conversations(conversations[:5], loaded.tokenizer, loaded.template, options)
    model = lora.apply(LlamaForCausalLM.from_pretrained(run["base"]), LoraMethod(r=4), family_for("llama"))
    fit(model, loaded.tokenizer, data, data, config, show_progress=False, dev_scorer=scorer)
    log = [json.loads(line) for line in (tmp_path / "train" / "train_log.jsonl").read_text().splitlines()]
    evals = [entry for entry in log if "eval_loss" in entry]
    assert len(evals) == 2 and all(
        {"accuracy", "majority_accuracy", "beats_majority", "macro_f1", "ie_f1"} <= set(entry) for entry in evals
    )
    best = json.loads((tmp_path / "train" / "best.json").read_text())
    assert best["metric"] == "accuracy" and best["greater_is_better"] is True
    assert model.training  # the scorer hands the model back in training mode
    loss_only = config.model_copy(update={"train": config.train.model_copy(update={"best_metric": "eval_loss"})})
    assert make_dev_scorer(loss_only, loaded.tokenizer, loaded.template, conversations) is None


def test_compare_loads_the_base_beside_a_freeze_checkpoint(run, write_checkpoint, tmp_path):
    from tunellm.methods import freeze
    from tunellm.methods.freeze import FreezeMethod

    model = freeze.apply(LlamaForCausalLM.from_pretrained(run["base"]), FreezeMethod(trainable_layers=1), None)
    torch.manual_seed(3)
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.add_(torch.randn_like(param) * 0.5)
    checkpoint = write_checkpoint(model, tmp_path / "frozen" / "step-1", FreezeMethod(trainable_layers=1), run["base"])
    common = [str(run["data"]), "--max-new-tokens", "5", "--no-progress"]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", *common, "--adapter", str(checkpoint), "--compare", "-o", str(out)])
    assert result.exit_code == 0, result.output
    alone = CliRunner().invoke(app, ["eval", *common, "--adapter", str(run["base"]), "-o", str(tmp_path / "alone")])
    assert alone.exit_code == 0, alone.output
    base = json.loads((out / "base" / "metrics.json").read_text())
    tuned = json.loads((out / "step-1" / "metrics.json").read_text())
    assert base["overall"] == json.loads((tmp_path / "alone" / "metrics.json").read_text())["overall"]
    assert tuned["overall"]["loss"] != base["overall"]["loss"]
    assert "(the base of step-1)" in base["model"]


class FakeVllm:
    """A stand-in `vllm` package: records what tunellm hands it and answers every prompt with `reply`."""

    def __init__(self, reply: str) -> None:
        import types

        self.engines: list[dict] = []
        self.calls: list[dict] = []
        fake = self

        class LLM:
            def __init__(self, **kwargs) -> None:
                fake.engines.append(kwargs)

            def generate(self, prompts, params, lora_request=None):
                fake.calls.append({"prompts": prompts, "params": params, "lora": lora_request})
                done = types.SimpleNamespace(text=reply, finish_reason="stop", token_ids=[1, 2, 3])
                return [types.SimpleNamespace(outputs=[done]) for _ in prompts]

        def lora_request(name, number, path):
            return types.SimpleNamespace(name=name, id=number, path=path)

        self.modules = {
            "vllm": types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kwargs: kwargs),
            "vllm.lora": types.SimpleNamespace(),
            "vllm.lora.request": types.SimpleNamespace(LoRARequest=lora_request),
        }


def test_the_vllm_backend_serves_the_adapter_as_lora_without_merging(run, loaded, tmp_path, monkeypatch):
    import sys

    from tunellm.evaluate import compare, vllm_backend
    from tunellm.infer.generate import encode_prompts
    from tunellm.infer.predict import split_reference

    fake = FakeVllm("hello there, friend")
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(vllm_backend, "vllm_unavailable", lambda: None)  # as on a CUDA machine with vLLM
    request = compare.EvalRequest(
        data=[str(run["data"])], adapters=[str(run["checkpoint"])], compare=True, backend="vllm", max_new_tokens=7
    )
    base, tuned = compare.evaluate_checkpoints(request, say=lambda text: None)
    (engine,) = fake.engines
    assert engine["model"] == str(run["base"]) and engine["enable_lora"] and engine["max_lora_rank"] == 8
    assert [call["lora"] is None for call in fake.calls] == [True, False]  # base first, then the adapter
    assert fake.calls[1]["lora"].path == str(run["checkpoint"])
    conversations = read_eval_data([str(run["data"])], loaded.config, None)
    prompts = [split_reference(conversation)[0] for conversation in conversations]
    options = TokenizeOptions.from_config(loaded.config.data)
    expected = encode_prompts(prompts, loaded.tokenizer, loaded.template, options)
    assert [p["prompt_token_ids"] for p in fake.calls[1]["prompts"]] == [list(ids) for ids in expected]
    params = fake.calls[1]["params"]
    assert (
        params["max_tokens"] == 7
        and params["temperature"] == 0
        and loaded.tokenizer.eos_token_id in params["stop_token_ids"]
    )
    assert tuned.overall["exact_match"] == base.overall["exact_match"] == pytest.approx(1 / 5)  # of 5 references
    assert tuned.overall["loss"] != base.overall["loss"]  # the loss still comes from transformers, adapter on


def test_vllm_is_not_used_for_checkpoints_it_cannot_serve(loaded, tmp_path):
    from dataclasses import replace

    from tunellm.evaluate.vllm_backend import vllm_cannot_serve
    from tunellm.methods.freeze import FreezeMethod
    from tunellm.methods.ptuning_v2 import PTuningV2Method

    assert vllm_cannot_serve(loaded) is None
    assert vllm_cannot_serve(replace(loaded, checkpoint=None)) is None
    dora = loaded.config.model_copy(update={"method": LoraMethod(r=4, use_dora=True)})
    assert "DoRA" in vllm_cannot_serve(replace(loaded, config=dora))
    prefix = loaded.config.model_copy(update={"method": PTuningV2Method()})
    assert "not ptuning_v2" in vllm_cannot_serve(replace(loaded, config=prefix))
    (tmp_path / "trained_weights.safetensors").write_bytes(b"")
    frozen = loaded.config.model_copy(update={"method": FreezeMethod()})
    assert "freeze" in vllm_cannot_serve(replace(loaded, config=frozen, checkpoint=tmp_path))
