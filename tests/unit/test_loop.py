"""The training loop on a tiny random llama (hidden 64, 2 layers, vocab 1024): loss, schedule, checkpoints, logs."""

from __future__ import annotations

import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from tunellm.config.schema import TrainConfig
from tunellm.errors import ConfigError, ModelError, TrainingError
from tunellm.train import fit, optim_state
from tunellm.train.checkpoint import STATE_FILES, check_complete, find_resume, list_checkpoints, prune
from tunellm.train.loop import accumulate_gradients, collate, evaluate
from tunellm.train.optim import build_scheduler
from tunellm.train.state import epoch_order
from tunellm.train.strategy import make_strategy

TOKENIZER = types.SimpleNamespace(pad_token_id=0)
TIME_KEYS = ("tokens_per_s", "elapsed")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_base(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config)


def tiny_lora(seed: int = 0, dropout: float = 0.0, r: int = 4, random_b: bool = False) -> PeftModel:
    lora = LoraConfig(
        r=r, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"], init_lora_weights=not random_b
    )
    return get_peft_model(tiny_base(seed), lora)


def toy_rows(n: int, seed: int = 0, lengths: tuple[int, int] = (4, 24)) -> list[dict[str, np.ndarray]]:
    """Rows of different lengths whose first third (the "prompt") is masked out of the loss."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ids = rng.integers(1, 1024, int(rng.integers(*lengths))).astype(np.int32)
        labels = ids.copy()
        labels[: len(ids) // 3] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def train_config(tmp_path: Path, **changes) -> TrainConfig:
    base = {
        "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 2,
        "max_steps": 4,
        "logging_steps": 1,
        "save_steps": 100,
        "eval_steps": 100,
        "learning_rate": 1e-2,
        "report_to": [],
        "resume": "never",
        "batching": "padded",  # these tests count rows per micro-batch; test_pack.py covers packed batches
    }
    return TrainConfig(**(base | changes))


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def without_time(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIME_KEYS} for e in entries]


def lora_weights(model: PeftModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_collate_right_pads_with_masked_labels():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": np.array([9], np.int32), "labels": [9]}]
    batch = collate(rows, pad_id=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 3, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [9, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_accumulated_gradients_equal_one_big_batch():
    model = tiny_lora(random_b=True)
    strategy = make_strategy(TrainConfig())
    rows = toy_rows(8, lengths=(3, 40))

    def grads(batches):
        model.zero_grad(set_to_none=True)
        loss_sum, tokens = accumulate_gradients(strategy, model, batches)
        return float(loss_sum) / tokens, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    big_loss, big = grads([collate(rows, 0)])
    small = [collate(rows[i : i + 2], 0) for i in range(0, 8, 2)]
    acc_loss, acc = grads(small)
    assert acc_loss == pytest.approx(big_loss, rel=1e-5)
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4, atol=1e-7)
    # The rows differ enough in length that a mean of per-micro-batch means would not pass the checks above.
    per_batch = [
        float(accumulate_gradients(strategy, model, [b])[0]) / int((b["labels"][:, 1:] != -100).sum()) for b in small
    ]
    assert abs(sum(per_batch) / len(per_batch) - big_loss) > 1e-3


def test_fit_with_accumulation_logs_the_big_batch_loss(tmp_path):
    rows = toy_rows(8, lengths=(3, 40))
    runs = {}
    for size, accumulation in ((8, 1), (2, 4), (3, 3)):
        config = train_config(
            tmp_path / f"{size}x{accumulation}",
            max_steps=1,
            per_device_train_batch_size=size,
            gradient_accumulation_steps=accumulation,
        )
        runs[size] = fit(tiny_lora(random_b=True), TOKENIZER, rows, None, config, show_progress=False).history[0]
    for size in (2, 3):
        assert runs[size]["loss"] == pytest.approx(runs[8]["loss"], rel=1e-5)
        assert runs[size]["grad_norm"] == pytest.approx(runs[8]["grad_norm"], rel=1e-4)


def test_gradient_checkpointing_changes_no_number(tmp_path):
    rows = toy_rows(8)
    plain = fit(tiny_lora(random_b=True), TOKENIZER, rows, None, train_config(tmp_path / "a", max_steps=2))
    config = train_config(tmp_path / "b", max_steps=2, gradient_checkpointing=True)
    checkpointed = fit(tiny_lora(random_b=True), TOKENIZER, rows, None, config)
    assert without_time(checkpointed.history) == without_time(plain.history)


def test_bf16_autocast_trains_like_fp32(tmp_path):
    rows = toy_rows(8)
    fp32 = fit(tiny_lora(random_b=True), TOKENIZER, rows, None, train_config(tmp_path / "a", max_steps=2))
    bf16 = fit(tiny_lora(random_b=True), TOKENIZER, rows, None, train_config(tmp_path / "b", max_steps=2, bf16=True))
    for got, want in zip(bf16.history, fp32.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-2)


def test_eval_loss_is_a_token_mean_independent_of_batch_size():
    model, strategy, rows = tiny_lora(), make_strategy(TrainConfig()), toy_rows(7, lengths=(3, 40))
    one = evaluate(strategy, model, rows, 1, 0)["eval_loss"]
    assert evaluate(strategy, model, rows, 4, 0)["eval_loss"] == pytest.approx(one, rel=1e-5)
    assert model.training


@pytest.mark.parametrize(
    ("kind", "warmup", "expected"),
    [
        ("linear", {"warmup_steps": 2}, [0, 0.5, 1, 0.75, 0.5, 0.25]),
        ("linear", {"warmup_ratio": 0.3}, [0, 0.5, 1, 0.75, 0.5, 0.25]),  # ceil(0.3 * 6) = 2 steps
        ("cosine", {"warmup_steps": 2}, [0, 0.5, 1, 0.853553, 0.5, 0.146447]),
        ("constant", {"warmup_steps": 2}, [1, 1, 1, 1, 1, 1]),
        ("constant_with_warmup", {"warmup_steps": 2}, [0, 0.5, 1, 1, 1, 1]),
    ],
)
def test_lr_schedule(kind, warmup, expected):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, TrainConfig(lr_scheduler_type=kind, learning_rate=1.0, **warmup), 6)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(expected, abs=1e-6)


def test_fit_logs_the_lr_each_step_ran_with(tmp_path):
    config = train_config(tmp_path, max_steps=6, warmup_steps=2, lr_scheduler_type="linear", learning_rate=1e-3)
    fit(tiny_lora(), TOKENIZER, toy_rows(8), None, config, show_progress=False)
    lrs = [entry["lr"] for entry in read_log(Path(config.output_dir))]
    assert lrs == pytest.approx([0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_full_model_memorizes_a_tiny_set(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"input_ids": (ids := rng.integers(1, 1024, 12).astype(np.int32)), "labels": ids} for _ in range(4)]
    config = train_config(tmp_path, max_steps=20, per_device_train_batch_size=4, lr_scheduler_type="constant")
    result = fit(tiny_base(), TOKENIZER, rows, None, config, show_progress=False)
    assert result.history[0]["loss"] > 6 and result.train_loss < 1
    assert (result.last_checkpoint / "model.safetensors").is_file()


def test_lora_loss_goes_down(tmp_path):
    config = train_config(tmp_path, max_steps=12, per_device_train_batch_size=4, lr_scheduler_type="constant")
    result = fit(tiny_lora(), TOKENIZER, toy_rows(4), None, config, show_progress=False)
    losses = [entry["loss"] for entry in result.history]
    assert losses[-1] < losses[0] - 0.2


def test_data_order_is_seeded_per_epoch_and_split_evenly():
    first = epoch_order(10, 3, seed=1, epoch=0)
    assert first == epoch_order(10, 3, seed=1, epoch=0) != epoch_order(10, 3, seed=1, epoch=1)
    assert sorted(i for batch in first for i in batch) == list(range(10))
    assert [len(b) for b in first] == [3, 3, 3, 1]
    halves = [epoch_order(9, 2, 1, 0, rank, 2) for rank in (0, 1)]
    assert [len(b) for b in halves[0]] == [len(b) for b in halves[1]] == [2, 2, 1]


def test_checkpoint_holds_everything_to_use_and_resume(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), pad_token="<pad>", unk_token="<unk>"
    )
    config = train_config(tmp_path, max_steps=4, save_steps=2, gradient_accumulation_steps=2)
    model = tiny_lora(dropout=0.1)
    result = fit(model, tokenizer, toy_rows(6), toy_rows(3, seed=1), config, show_progress=False)
    folder = Path(config.output_dir) / "step-4"
    assert result.last_checkpoint == folder
    for name in ("adapter_model.safetensors", "adapter_config.json", "config.yaml", "tokenizer.json"):
        assert (folder / name).is_file(), name
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [folder, folder / "adapter_model.safetensors"]}
    assert set(modes.values()) <= {0o777 & ~mask, 0o666 & ~mask}, modes  # not safetensors' 0600
    state = json.loads((folder / "state" / "trainer_state.json").read_text())
    # 6 rows = 3 micro-batches a epoch; step 1 takes 2, step 2 the last one, so step 4 ends epoch 2.
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (4, 2, 0)
    assert state["history"] == read_log(Path(config.output_dir))
    assert yaml.safe_load((folder / "config.yaml").read_text())["train"]["max_steps"] == 4
    rng = json.loads((folder / "state" / "rng_0.json").read_text())
    assert {"python", "numpy", "torch"} <= rng.keys()
    assert len(load_file(folder / "state" / "optimizer.safetensors")) == 3 * len(lora_weights(model))
    assert json.loads((folder / "state" / "scheduler.json").read_text())["last_epoch"] == 4

    reloaded = PeftModel.from_pretrained(tiny_base(), str(folder)).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_logs_curve_and_tensorboard_are_written(tmp_path):
    config = train_config(tmp_path, max_steps=4, eval_steps=2, logging_steps=2, report_to=["tensorboard"])
    fit(tiny_lora(), TOKENIZER, toy_rows(8), toy_rows(2, seed=1), config, show_progress=True)
    out = Path(config.output_dir)
    entries = read_log(out)
    assert [(e["step"], "eval_loss" in e) for e in entries] == [(2, False), (2, True), (4, False), (4, True)]
    assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"} <= entries[0].keys()
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_report_to_a_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    import tunellm.train.log as log_module

    monkeypatch.setattr(log_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="not installed") as error:
        fit(tiny_lora(), TOKENIZER, toy_rows(2), None, train_config(tmp_path, report_to=["wandb"]))
    assert "pip install wandb" in str(error.value)


def test_prune_keeps_the_newest_and_the_best(tmp_path):
    for step in (2, 4, 6, 8, 10):
        (tmp_path / f"step-{step}").mkdir()
    (tmp_path / ".tmp-step-12").mkdir()
    removed = prune(tmp_path, limit=2, best_step=4)
    assert [p.name for p in removed] == ["step-2", "step-6"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-4", "step-8", "step-10"]


def test_fit_prunes_but_keeps_the_best(tmp_path):
    # A higher eval loss counting as better makes the first evaluation the best: an old checkpoint to keep.
    config = train_config(tmp_path, max_steps=8, save_steps=2, eval_steps=2, save_total_limit=1, greater_is_better=True)
    result = fit(tiny_lora(), TOKENIZER, toy_rows(4), toy_rows(4), config, show_progress=False)
    out = Path(config.output_dir)
    best = json.loads((out / "best.json").read_text())
    assert best["step"] == 2 and best["metric"] == "eval_loss"
    assert [p.name for p in list_checkpoints(out)] == ["step-2", "step-8"]
    assert result.best_checkpoint == out / "step-2"


def test_a_write_cut_short_leaves_no_complete_looking_checkpoint(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    config = train_config(tmp_path, max_steps=4, save_steps=2)
    with monkeypatch.context() as patch:
        patch.setattr(optim_state, "write_optimizer", disk_full)
        with pytest.raises(TrainingError, match="disk full"):
            fit(tiny_lora(), TOKENIZER, toy_rows(8), None, config, show_progress=False)
    out = Path(config.output_dir)
    assert list_checkpoints(out) == [] and not (out / ".tmp-step-2").exists()  # removed: it gives the space back
    (out / ".tmp-step-2").mkdir()  # as a killed writer leaves it
    result = fit(tiny_lora(), TOKENIZER, toy_rows(8), None, config.model_copy(update={"resume": "auto"}))
    assert result.global_step == 4 and not (out / ".tmp-step-2").exists()


def test_resume_names_what_an_incomplete_checkpoint_lacks(tmp_path):
    folder = tmp_path / "run" / "step-4"
    (folder / "state").mkdir(parents=True)
    (folder / "state" / "trainer_state.json").write_text("{}")
    assert find_resume(tmp_path / "run", "auto") is None  # auto passes over it (with a warning naming it)
    assert find_resume(tmp_path / "run", str(tmp_path / "run")) == folder
    with pytest.raises(ModelError, match="missing: state/optimizer.safetensors") as error:
        check_complete(folder)
    assert "it holds: state/trainer_state.json" in str(error.value)
    with pytest.raises(ModelError, match="not found"):
        find_resume(tmp_path / "run", str(tmp_path / "nowhere"))
    (tmp_path / "run" / "step-2").mkdir()
    with pytest.raises(ConfigError, match="later than step-2: step-4"):
        find_resume(tmp_path / "run", str(tmp_path / "run" / "step-2"))


def test_a_checkpoint_is_complete_with_the_weight_files_its_method_declares(tmp_path):
    from safetensors.torch import save_file

    from tunellm.methods import METHODS

    folder = tmp_path / "run" / "step-2"
    (folder / "state").mkdir(parents=True)
    for name in (*STATE_FILES, "optimizer.json"):
        (folder / "state" / name).write_text("{}")
    save_file({"step": torch.zeros(1)}, str(folder / "state" / "optimizer.safetensors"))
    (folder / "model.safetensors").write_text("")  # completeness looks at names only
    check_complete(folder)  # without a method: what save_pretrained writes
    check_complete(folder, METHODS.get("full"))
    with pytest.raises(ModelError, match="missing: trained_weights.safetensors"):
        check_complete(folder, METHODS.get("freeze"))
    assert find_resume(tmp_path / "run", "auto", method=METHODS.get("lora")) is None  # no adapter: passed over
    (folder / "model.safetensors").unlink()
    save_file({"lora_A": torch.zeros(1)}, str(folder / "adapter_model.safetensors"))
    assert find_resume(tmp_path / "run", "auto", method=METHODS.get("lora")) == folder


def test_resume_never_refuses_a_folder_with_checkpoints(tmp_path):
    config = train_config(tmp_path, max_steps=2, save_steps=2)
    fit(tiny_lora(), TOKENIZER, toy_rows(4), None, config, show_progress=False)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        fit(tiny_lora(), TOKENIZER, toy_rows(4), None, config, show_progress=False)


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    rows, dev = toy_rows(10), toy_rows(3, seed=1)
    changes = {"max_steps": 12, "save_steps": 4, "eval_steps": 3, "logging_steps": 5, "save_total_limit": None}
    changes |= {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 3, "warmup_ratio": 0.2}
    whole = train_config(tmp_path / "whole", **changes)
    model = tiny_lora(dropout=0.3)
    fit(model, TOKENIZER, rows, dev, whole, show_progress=False)

    cut = train_config(tmp_path / "cut", **changes, resume="auto")
    Path(cut.output_dir).mkdir(parents=True)
    shutil.copytree(Path(whole.output_dir) / "step-4", Path(cut.output_dir) / "step-4")
    resumed = tiny_lora(dropout=0.3)
    fit(resumed, TOKENIZER, rows, dev, cut, show_progress=False)

    for name, weight in lora_weights(model).items():
        torch.testing.assert_close(lora_weights(resumed)[name], weight, rtol=0, atol=1e-6)
    assert without_time(read_log(Path(cut.output_dir))) == without_time(read_log(Path(whole.output_dir)))


def test_init_adapter_starts_from_its_weights(tmp_path):
    source = tiny_lora(seed=1, random_b=True)
    source.save_pretrained(str(tmp_path / "adapter"))
    config = train_config(tmp_path, max_steps=1, learning_rate=1e-9, init_adapter=str(tmp_path / "adapter"))
    model = tiny_lora(seed=1)
    fit(model, TOKENIZER, toy_rows(2), None, config, show_progress=False)
    for name, weight in lora_weights(source).items():
        torch.testing.assert_close(lora_weights(model)[name], weight, rtol=0, atol=1e-6)

    wrong_rank = train_config(tmp_path / "other", init_adapter=str(tmp_path / "adapter"))
    with pytest.raises(ModelError, match="do not fit"):
        fit(tiny_lora(seed=1, r=2), TOKENIZER, toy_rows(2), None, wrong_rank, show_progress=False)
