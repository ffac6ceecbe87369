"""`tunellm doctor`'s checks on planted problems, each named by the check that must catch it, and the plug-in
rule: every module in tunellm/doctor/checks registers a group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunellm.config.load import load_config
from tunellm.data.templates.base import TurnTemplate
from tunellm.doctor import CHECKS, Context, run_checks
from tunellm.doctor.checks.template import check_bos, check_eos, check_export
from tunellm.doctor.estimate import GIB
from tunellm.doctor.hardware import Hardware

BIG = Hardware("big test machine", "cpu", 64 * GIB, 1e11)
ROW = {"instruction": "Add the numbers.", "input": "1 and 2", "output": "3."}


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def results(context: Context, *groups: str) -> dict:
    return {r.name: r for r in run_checks(context, list(groups) or None)}


@pytest.fixture
def context_for(tiny_llama_dir, default_tokenizer, tmp_path):
    def build(*overrides: str, hardware: Hardware = BIG, tokenizer=default_tokenizer) -> Context:
        keys = [f"model.name_or_path={tiny_llama_dir}", f"data.cache_dir={tmp_path / 'cache'}", *overrides]
        return Context(load_config(None, keys), hardware, tokenizer=tokenizer)

    return build


def test_every_check_module_registers_a_group():
    folder = Path(__file__).resolve().parents[2] / "tunellm" / "doctor" / "checks"
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    assert modules == set(CHECKS.names()), "import new check modules in tunellm/doctor/checks/__init__.py"


def test_a_clean_run_passes_every_check(context_for, tmp_path):
    train = write(tmp_path / "train.jsonl", [ROW, {**ROW, "input": "3 and 4", "output": "7."}])
    found = results(context_for(f"data.train={train}"))
    assert {r.status for r in found.values()} == {"pass"}, {n: r.message for n, r in found.items()}
    assert set(found) >= {"data.format", "data.rows", "data.bad_rows", "data.fully_masked", "data.truncation",
                          "data.overlap", "template.sample", "template.eos", "template.pad", "template.bos",
                          "template.export", "memory.peak", "memory.time"}  # fmt: skip
    assert "[[3.<|im_end|>]]" in found["template.sample"].details[0]  # the trained reply, EOS included
    assert found["template.eos"].data["end_id"] == 2 and 2 in found["template.eos"].data["stop_ids"]


def test_data_faults_are_found_with_their_locations(context_for, tmp_path):
    long = {**ROW, "instruction": "word " * 300}
    train = write(tmp_path / "train.jsonl", [ROW, "{broken", {"instruction": "no output"}, long, ROW])
    dev = write(tmp_path / "dev.jsonl", [{**ROW, "output": "three"}, {**ROW, "input": "5 and 6", "output": "11."}])
    found = results(context_for(f"data.train={train}", f"data.dev={dev}", "data.cutoff_len=64"), "data")
    assert found["data.bad_rows"].status == "fail"
    assert f"{train}, line 2" in found["data.bad_rows"].details[0]
    assert f"{train}, line 3" in found["data.bad_rows"].details[1]
    assert found["data.rows"].message.startswith("3 rows read of 5")
    assert found["data.fully_masked"].status == "warn" and f"{train}:4" in found["data.fully_masked"].details[0]
    assert found["data.truncation"].status == "warn" and "1 rows (33.3%)" in found["data.truncation"].message
    assert found["data.overlap"].status == "warn" and f"{dev}:1" in found["data.overlap"].details[0]
    assert found["data.overlap"].data == {"shared": 1}
    skipping = results(context_for(f"data.train={train}", "data.skip_bad=true"), "data")
    assert skipping["data.bad_rows"].status == "warn"


def test_dev_split_with_repeated_prompts_is_flagged(context_for, tmp_path):
    train = write(tmp_path / "train.jsonl", [ROW, ROW, {**ROW, "input": "8 and 9"}])
    found = results(context_for(f"data.train={train}", "data.dev_split=0.3"), "data")
    assert found["data.overlap"].status == "warn" and found["data.overlap"].data == {"repeated": 2}


def test_an_end_of_turn_outside_the_model_vocabulary_is_a_sure_failure(context_for, default_tokenizer, tmp_path):
    tokenizer = default_tokenizer.__class__.from_pretrained(default_tokenizer.name_or_path)
    tokenizer.add_special_tokens({"eos_token": "<|stop|>"})  # a new id past the model's 49,152 embeddings
    train = write(tmp_path / "train.jsonl", [ROW])
    result = check_eos(context_for(f"data.train={train}", "data.template=alpaca", tokenizer=tokenizer))
    assert result.status == "fail" and result.sure and "can never be generated" in result.message


class NoEndTemplate(TurnTemplate):
    """A reply followed by nothing: the model never learns to stop."""

    name = "no_end_test"

    def user(self, content: str, round_index: int, system: str) -> str:
        return f"Q: {content}\nA: "

    def response(self, turn) -> str:
        return turn.content


def test_a_reply_that_ends_with_no_stop_is_a_sure_failure(context_for, default_tokenizer, tmp_path):
    context = context_for(f"data.train={write(tmp_path / 't.jsonl', [ROW])}")
    context.__dict__["template"] = NoEndTemplate(default_tokenizer)
    result = check_eos(context)
    assert result.status == "fail" and result.sure and "replies never end" in result.message


def test_a_template_that_ends_turns_unlike_the_tokenizer_chat_template_warns(context_for, default_tokenizer, tmp_path):
    """Qwen-base style: EOS <|endoftext|>, while the tokenizer's chat template closes turns with <|im_end|>."""
    tokenizer = default_tokenizer.__class__.from_pretrained(default_tokenizer.name_or_path)
    tokenizer.eos_token = "<|endoftext|>"
    train = write(tmp_path / "t.jsonl", [ROW])
    result = check_eos(context_for(f"data.train={train}", "data.template=alpaca", tokenizer=tokenizer))
    assert result.status == "warn" and not result.sure
    assert "ends turns with '<|endoftext|>'" in result.message and "'<|im_end|>'" in result.message


def test_bos_check_agrees_with_what_training_samples_start_with(context_for, default_tokenizer, tmp_path):
    """A SentencePiece-style tokenizer that puts <s> before text: the check passes exactly when samples start so."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from tunellm.data.record import Conversation, Source, Turn
    from tunellm.data.tokenize import TokenizeOptions, tokenize_conversations

    words = ["<unk>", "<s>", "</s>", "a", "Add", "the", "numbers", "What", "is", "2+2?", "Four.", "###"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    context = context_for(
        f"data.train={write(tmp_path / 't.jsonl', [ROW])}", "data.template=alpaca", tokenizer=tokenizer
    )
    result = check_bos(context)
    probe = Conversation([Turn("user", "What is 2+2?"), Turn("assistant", "Four.")], Source("t"))
    starts_with_bos = (
        tokenize_conversations([probe], tokenizer, context.template, TokenizeOptions())[0]["input_ids"][0] == 1
    )
    assert result.status == ("pass" if starts_with_bos else "warn"), result.message
    assert "'<s>'" in result.message
    plain = check_bos(context_for(f"data.train={write(tmp_path / 't.jsonl', [ROW])}"))
    assert plain.status == "pass" and "none expected" in plain.message


def test_an_exported_chat_template_that_renders_differently_fails(context_for, tmp_path, monkeypatch):
    context = context_for(f"data.train={write(tmp_path / 't.jsonl', [ROW])}", "data.template=chatml")
    assert check_export(context).status == "pass"
    monkeypatch.setattr(type(context.template), "chat_template", lambda self: "{{ messages[0]['content'] }}")
    result = check_export(context)
    assert result.status == "fail" and "renders differently" in result.message


def test_memory_beyond_the_device_is_a_sure_failure_with_settings_that_fit(context_for, tmp_path):
    train = write(tmp_path / "t.jsonl", [{**ROW, "output": "word " * 200}] * 8)
    # padded rows: 8 x the longest row, estimated over SURE_OOM (1.3x) of 0.8 GiB
    small = Hardware("small test machine", "cpu", 0.8 * GIB, 1e11)
    padded = (f"data.train={train}", "train.batching=padded", "per_device_train_batch_size=8")
    peak = results(context_for(*padded, hardware=small), "memory")["memory.peak"]
    assert peak.status == "fail" and peak.sure and peak.message.startswith("out of memory"), peak.message
    assert any("per_device_train_batch_size=" in fix for fix in peak.data["fits_with"]), peak.details
    # packed batches are sized by their token budget, so that is what the fix lowers
    packed = (f"data.train={train}", "train.tokens_per_batch=8192")
    peak = results(context_for(*packed, hardware=small), "memory")["memory.peak"]
    assert peak.status == "fail" and peak.sure, peak.message
    assert any(fix.startswith("train.tokens_per_batch=") for fix in peak.data["fits_with"]), peak.details
    # an explicit roomy machine: the host's own free memory varies with what else runs on it
    roomy_machine = Hardware("roomy test machine", "cpu", 64.0 * GIB, 1e11)
    roomy = results(context_for(f"data.train={train}", hardware=roomy_machine), "memory")
    assert roomy["memory.peak"].status == "pass" and not roomy["memory.peak"].sure
    assert roomy["memory.time"].data["seconds_per_step"] > 0


def test_an_unknown_check_group_is_an_error(context_for):
    from tunellm.errors import TunellmError

    with pytest.raises(TunellmError, match="(?s)unknown doctor check 'memroy'.*did you mean 'memory'"):
        run_checks(context_for(), ["memroy"])
