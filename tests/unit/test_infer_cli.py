"""Using a trained checkpoint: what --adapter resolves to, loading it, chat and predict through the CLI."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaForCausalLM
from typer.testing import CliRunner

from tunellm.cli.main import app
from tunellm.data.record import Conversation, Source, Turn
from tunellm.errors import ModelError
from tunellm.infer.chat import ChatSession, chat_loop
from tunellm.infer.generate import SamplingOptions, generate
from tunellm.infer.load import load_for_inference, resolve_checkpoint
from tunellm.methods import lora
from tunellm.methods.lora import LoraMethod
from tunellm.models.families import family_for
from tunellm.train.checkpoint import write_best
from tunellm.train.state import TrainState

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, write_checkpoint, tiny_llama_dir) -> dict[str, Path]:
    """A tiny base model folder and a run folder with step-2 (best, in best.json) and step-4 checkpoints."""
    root = tmp_path_factory.mktemp("infer")
    base = tiny_llama_dir
    out = root / "run"
    for step in (2, 4):
        model = lora.apply(LlamaForCausalLM.from_pretrained(base), LoraMethod(r=4), family_for("llama"))
        torch.manual_seed(step)
        with torch.no_grad():  # B starts at zero: make each adapter change the output
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
        write_checkpoint(model, out / f"step-{step}", LoraMethod(r=4), base)
    return {"base": base, "run": out, "root": root}


def test_a_checkpoint_folder_is_itself(run):
    assert resolve_checkpoint(run["run"] / "step-2") == run["run"] / "step-2"


def test_a_run_folder_means_its_best_checkpoint(run, tmp_path):
    write_best(run["run"], TrainState(global_step=4, best_step=2, best_value=1.0), "eval_loss", False)
    try:
        assert resolve_checkpoint(run["run"]) == run["run"] / "step-2"
    finally:
        (run["run"] / "best.json").unlink()


def test_a_run_folder_without_best_json_means_its_newest_checkpoint(run):
    assert resolve_checkpoint(run["run"]) == run["run"] / "step-4"


def test_a_wrong_folder_says_what_it_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "logs").mkdir()
    with pytest.raises(ModelError, match="not a checkpoint") as caught:
        resolve_checkpoint(tmp_path)
    assert "logs/, notes.txt" in str(caught.value) and "adapter_config.json" in str(caught.value)
    with pytest.raises(ModelError, match="not found"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "best.json").write_text(json.dumps({"checkpoint": "step-9"}))
    with pytest.raises(ModelError, match="step-9"):
        resolve_checkpoint(tmp_path)


@pytest.fixture(scope="module")
def loaded(run):
    return load_for_inference(run["run"] / "step-4", device="cpu")


def test_loading_takes_base_model_and_template_from_the_checkpoint(loaded, run):
    assert loaded.checkpoint == run["run"] / "step-4"
    assert loaded.config.model.name_or_path == str(run["base"])
    assert loaded.template.name == "hf_chat"
    assert type(loaded.model).__name__ == "PeftModelForCausalLM"
    assert not loaded.model.training


def test_chat_loop_streams_replies_and_handles_commands(loaded):
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.template, SamplingOptions(max_new_tokens=6))
    out = io.StringIO()
    replies = chat_loop(session, io.StringIO("Hi\n\nHow are you?\n/reset\n/nope\nHi\n/exit\nnever read\n"), out)
    assert replies == 3
    text = out.getvalue()
    assert "(conversation cleared)" in text and "unknown command /nope" in text
    assert [t.role for t in session.turns] == ["user", "assistant"]  # cleared before the last "Hi"
    reply = session.turns[1].content
    assert text.startswith(reply + "\n") and text.endswith(reply + "\n")  # after /reset, "Hi" gets the same reply


def test_the_adapter_changes_the_reply_and_a_full_model_folder_loads(loaded, run):
    base = load_for_inference(run["base"], device="cpu")  # a folder holding a whole model is its own checkpoint
    assert base.checkpoint == run["base"] and base.config.model.name_or_path == str(run["base"])
    assert expected_reply(base, "Hi", 6) != expected_reply(loaded, "Hi", 6)


def expected_reply(loaded, message: str, max_new_tokens: int) -> str:
    conversation = Conversation([Turn("user", message)], Source("<chat>"))
    options = SamplingOptions(max_new_tokens=max_new_tokens)
    return generate(loaded.model, loaded.tokenizer, loaded.template, [conversation], options)[0].text


def test_chat_one_shot_through_the_cli(run, loaded):
    result = CliRunner().invoke(app, ["chat", "--adapter", str(run["run"]), "--prompt", "Hi", "--max-new-tokens", "7"])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected_reply(loaded, "Hi", 7) + "\n"


def test_the_generate_section_drives_chat_and_its_flags_are_shortcuts(run, loaded, tmp_path):
    step = run["run"] / "step-4"
    key = CliRunner().invoke(app, ["chat", "-a", str(step), "--prompt", "Hi", "generate.max_new_tokens=7"])
    assert key.exit_code == 0, key.output
    assert key.stdout == expected_reply(loaded, "Hi", 7) + "\n"  # as --max-new-tokens 7 gives
    old = tmp_path / "step-4"  # a checkpoint saved before the generate: section, with eval.max_new_tokens
    shutil.copytree(step, old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    saved.pop("generate", None)
    saved["eval"]["max_new_tokens"] = 3
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    result = CliRunner().invoke(app, ["chat", "--adapter", str(old), "--prompt", "Hi"])
    assert result.stdout == expected_reply(loaded, "Hi", 3) + "\n"
    saved["generate"] = {"max_new_tokens": 4}  # the new key wins over the old
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    result = CliRunner().invoke(app, ["chat", "--adapter", str(old), "--prompt", "Hi"])
    assert result.stdout == expected_reply(loaded, "Hi", 4) + "\n"


def test_chat_with_a_wrong_adapter_folder_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(app, ["chat", "--adapter", str(tmp_path), "--prompt", "Hi"])
    assert isinstance(result.exception, ModelError)


def test_predict_writes_one_row_per_record(run, loaded, tmp_path):
    data = tmp_path / "dev.jsonl"
    rows = [
        {"instruction": "Say hi", "input": "", "output": "hi", "id": 1},
        {"instruction": "Add", "input": "2+2", "output": "", "id": 2},
        {"instruction": "Name a colour", "id": 3},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "preds" / "out.jsonl"
    args = ["predict", str(data), "-o", str(out), "--adapter", str(run["run"] / "step-4"), "--batch-size", "2"]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "5", "--no-progress", "data.format=alpaca"])
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["source"] for row in written] == [f"{data}:1", f"{data}:2", f"{data}:3"]
    assert [row.get("reference") for row in written] == ["hi", None, None]
    assert [row["extra"]["id"] for row in written] == [1, 2, 3]
    assert written[0]["prompt"] == "Say hi"
    assert written[0]["output"] == expected_reply(loaded, "Say hi", 5)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]  # no temp file left
    assert "wrote 3 predictions" in result.output
