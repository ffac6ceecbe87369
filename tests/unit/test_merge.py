"""`tunellm merge` on a tiny llama LoRA checkpoint: the plain folder it writes, the parity check that runs after
every merge (and fails a corrupted merge with exit 2 and a report), and what it refuses."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from tunellm.cli.main import main
from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import get_template
from tunellm.errors import ConfigError, DataError
from tunellm.infer.merge import MergeOptions, merge_checkpoint
from tunellm.infer.parity import PARITY_FILE, Outputs, compare
from tunellm.methods import METHODS, lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_lora_checkpoint) -> Path:
    return tiny_lora_checkpoint


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`tunellm ARGS` in this process, as the console script runs it: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["tunellm", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code or 0, captured.out, captured.err


def test_merge_writes_a_plain_folder_that_matches_the_adapter(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "merged"
    status, stdout, stderr = run_cli(monkeypatch, capsys, "merge", str(checkpoint), "-o", str(out))
    assert status == 0, stderr
    assert "parity holds" in stderr and "parity: merged vs adapter (float32" in stdout
    assert "weights: 14 merged LoRA layers against base + scale·B·A in float32: match" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", PARITY_FILE} <= names
    assert not any(n.endswith((".bin", ".pt")) or n.startswith("adapter") for n in names), names
    assert not list(tmp_path.glob(".merged.*"))  # no staging folder left behind
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, out / "model.safetensors", out / "config.json"]}
    assert set(modes.values()) <= {0o777 & ~mask, 0o666 & ~mask}, modes  # as mkdir/open make them, not 0700/0600
    parity = json.loads((out / PARITY_FILE).read_text())
    assert parity["passed"] and parity["dtype"] == "float32" and len(parity["prompts"]) == 4
    assert parity["max_logit_diff"] < 1e-3 and all(p["greedy"] == "same" for p in parity["prompts"])

    model = AutoModelForCausalLM.from_pretrained(out)  # a plain transformers folder: no peft, no tunellm
    assert type(model).__name__ == "LlamaForCausalLM" and not any("lora" in n for n, _ in model.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = model.generation_config.eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos]) and not model.generation_config.do_sample
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)["input_ids"]
    template = get_template("hf_chat", tokenizer)
    prompt = Conversation([Turn("user", "Hi")], Source("<test>"))
    assert "".join(s.text for s in template.render(prompt, True)) == tokenizer.decode(ids)


def test_a_turn_template_is_written_as_jinja_and_prompts_come_from_data(checkpoint, tmp_path):
    data = tmp_path / "dev.jsonl"
    rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"}, {"instruction": "Name a colour.", "input": ""}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "alpaca"
    options = MergeOptions(out, overrides=["data.template=alpaca"], data=[str(data)], prompts=5)
    result = merge_checkpoint(checkpoint, options)
    assert result.template == "alpaca" and result.report.passed
    assert [row.prompt for row in result.report.rows] == ["Add 2 and 3.", "Name a colour."]  # replies left out
    assert result.unlisted_stops == ["### Instruction:"]  # generation_config.json holds token ids only
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("Below is an instruction") and text.endswith("### Instruction:\nHi\n\n### Response:\n")
    assert all(row.prompt_render == "same" for row in result.report.rows)


def test_a_corrupted_merge_exits_2_with_the_report_and_keeps_the_folder(checkpoint, tmp_path, monkeypatch, capsys):
    real_merge = lora.merge

    def corrupted(model):
        merged = real_merge(model)
        with torch.no_grad():
            merged.model.layers[0].mlp.down_proj.weight.add_(0.05)
        return merged

    monkeypatch.setattr(lora, "merge", corrupted)
    out = tmp_path / "bad"
    status, stdout, stderr = run_cli(monkeypatch, capsys, "merge", str(checkpoint), "-o", str(out), "--prompts", "2")
    assert status == 2
    assert "parity check failed: max logit difference" in stderr and "above the tolerance 0.001" in stderr
    assert "Traceback" not in stderr and f"kept at {out}" in stderr
    assert "parity: merged vs adapter" in stdout  # the table is printed before the error
    parity = json.loads((out / PARITY_FILE).read_text())
    assert not parity["passed"] and parity["max_logit_diff"] > 1e-3
    assert "max logit difference" in parity["problems"][0]


def test_a_method_that_cannot_merge_is_refused_before_loading(checkpoint, monkeypatch):
    monkeypatch.setattr(lora, "supports_merge", False)
    with pytest.raises(ConfigError, match="a lora checkpoint cannot be merged") as error:
        merge_checkpoint(checkpoint, MergeOptions(Path("unused"), model="/nonexistent/base"))
    assert f"tunellm chat --adapter {checkpoint}" in str(error.value)


def test_a_ptuning_v2_checkpoint_is_refused_with_a_clean_error(checkpoint, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "step-1"
    shutil.copytree(checkpoint, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["method"] = {"name": "ptuning_v2"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    status, _, stderr = run_cli(monkeypatch, capsys, "merge", str(folder), "-o", str(tmp_path / "out"))
    assert status == 2 and "a ptuning_v2 checkpoint cannot be merged" in stderr
    assert "field 'method.name'" in stderr and "tunellm chat --adapter" in stderr


def test_a_missing_data_file_fails_before_loading(checkpoint, tmp_path):
    with pytest.raises(DataError, match="not found"):
        merge_checkpoint(checkpoint, MergeOptions(tmp_path / "out", model="/nonexistent/base", data=["nope.jsonl"]))


def test_the_output_folder_is_checked_first(checkpoint, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty") as error:
        merge_checkpoint(checkpoint, MergeOptions(full, model="/nonexistent/base"))
    assert "--force" in str(error.value)
    for inside in (checkpoint, checkpoint.parent):  # the checkpoint, or a folder holding it: never replaced
        with pytest.raises(ConfigError, match="would replace"):
            merge_checkpoint(checkpoint, MergeOptions(inside, force=True))


def test_force_replaces_an_existing_folder(checkpoint, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "old.txt").write_text("x")
    merge_checkpoint(checkpoint, MergeOptions(out, force=True, prompts=1, max_new_tokens=4))
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def outputs(prompts: list[list[int]], replies: list[list[int]], logits: list[torch.Tensor]) -> Outputs:
    return Outputs(prompts, replies, [str(r) for r in replies], logits)


def compare_two(adapter: Outputs, merged: Outputs, renders=("same", "same")):
    chats = [Conversation([Turn("user", q)], Source("<t>")) for q in ("a", "b")]
    return compare(chats, adapter, merged, renders, tolerance=0.5, dtype=torch.bfloat16, max_new_tokens=2)


def test_greedy_replies_may_part_only_at_a_near_tie_and_nan_fails():
    logits = torch.zeros(3, 5)
    logits[1, 2], logits[1, 3] = 1.0, 0.7  # after the 2-token prompt: token 2 leads token 3 by 0.3
    adapter = outputs([[1, 2], [3, 4]], [[2], [2]], [logits, logits.clone()])
    merged = outputs([[1, 2], [3, 4]], [[2], [3]], [logits + 0.1, logits.clone()])
    report = compare_two(adapter, merged)
    assert report.passed and report.max_logit_diff == pytest.approx(0.1)
    assert report.rows[1].greedy(0.5) == "near tie at token 1 (gap 0.3)"
    merged.reply_ids[1] = [4]  # token 4 trails by 1.0: a real disagreement
    assert compare_two(adapter, merged).problems() == ["1 of 2 greedy replies differ"]
    merged.reply_ids[1] = [2]
    merged.logits[0][0, 0] = float("nan")
    assert "max logit difference nan" in compare_two(adapter, merged).problems()[0]


def test_a_prompt_the_written_tokenizer_encodes_otherwise_fails():
    logits = torch.zeros(3, 5)
    adapter = outputs([[1, 2], [3, 4]], [[2], [2]], [logits, logits])
    merged = outputs([[1, 2], [3, 5]], [[2], [2]], [logits, logits])
    report = compare_two(adapter, merged, renders=("same", "same"))
    assert report.rows[1].prompt_render == "tokens differ" and report.to_json()["max_logit_diff"] is None
    assert report.problems()[1:] == ["the written tokenizer renders 1 of 2 prompts differently"]


def test_a_freeze_checkpoint_merges_into_its_base(write_checkpoint, tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from tunellm.methods.freeze import FreezeMethod

    freeze = METHODS.get("freeze")
    model = freeze.apply(LlamaForCausalLM.from_pretrained(tiny_llama_dir), FreezeMethod(trainable_layers=1), None)
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(4)) * 0.5)
    folder = write_checkpoint(model, tmp_path / "frozen" / "step-1", FreezeMethod(trainable_layers=1), tiny_llama_dir)
    out = tmp_path / "merged"
    status, _, stderr = run_cli(monkeypatch, capsys, "merge", str(folder), "-o", str(out))
    assert status == 0, stderr
    merged = AutoModelForCausalLM.from_pretrained(out)
    expected = dict(model.named_parameters())
    assert all(torch.equal(p, expected[n]) for n, p in merged.named_parameters())
