"""The CLI's one vocabulary and one voice: argument splitting, shared flags, the generate: section, and errors
that start with `error:`, exit 2 and name where the bad value came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import typer
import yaml

from tunellm.atomic import build_folder_atomically, usual_permissions
from tunellm.cli.args import SHARED, config_and_overrides, shortcuts, split_args
from tunellm.cli.main import app
from tunellm.config.load import Override, load_config, to_yaml
from tunellm.data.formats import ReadOptions
from tunellm.data.read import jsonl_rows, read_conversations
from tunellm.errors import ConfigError, DataError
from tunellm.infer.generate import SamplingOptions

ROOT = Path(__file__).resolve().parents[2]


def tunellm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh process, as a user runs it (exit code, stderr and all)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tunellm", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_positional_arguments_split_into_files_and_overrides(tmp_path):
    odd = tmp_path / "a=b.jsonl"  # an existing file whose name holds `=` is a file
    odd.write_text("{}\n")
    files, overrides = split_args(["x.jsonl", "max_steps=3", str(odd), "generate.temperature=0.5"])
    assert files == ["x.jsonl", str(odd)]
    assert overrides == ["max_steps=3", "generate.temperature=0.5"]
    assert config_and_overrides(["lr=1", "run.yaml"]) == ("run.yaml", ["lr=1"])  # in any order
    with pytest.raises(ConfigError, match="unexpected argument.*b.yaml"):
        config_and_overrides(["a.yaml", "b.yaml"])
    with pytest.raises(ConfigError, match="expected key=value"):
        split_args(["hello"], files=0)


def test_flags_are_shortcuts_that_name_themselves():
    found = shortcuts(model="org/m:v1", temperature=0.7, skip_bad=False, stop=["</s>", "###"], seed=None)
    assert [(item.text, item.origin) for item in found] == [
        ('model.name_or_path="org/m:v1"', "--model"),
        ("generate.temperature=0.7", "--temperature"),
        ('generate.stop=["</s>", "###"]', "--stop"),
    ]
    config = load_config(None, found)
    assert config.model.name_or_path == "org/m:v1" and config.generate.stop == ["</s>", "###"]


def every_command(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from every_command(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def test_shared_options_have_the_same_flags_in_every_command():
    seen = {}
    for name, command in every_command(typer.main.get_command(app)):
        for param in command.params:
            if param.name in ("model", "template", "device", "adapter") and param.param_type_name == "option":
                long, short, _ = SHARED[param.name]
                assert set(param.opts) == {long, short}, f"tunellm {name} {param.opts}"
                seen.setdefault(param.name, []).append(name)
    assert {"chat", "predict", "eval", "merge", "serve"} <= set(seen["device"])
    assert {"chat", "predict", "eval", "train", "doctor", "data stats"} <= set(seen["model"])


def test_help_lists_debug_and_is_quick_without_torch():
    code = "import sys; from tunellm.cli.main import main; sys.argv = ['tunellm', '--help']\ntry:\n    main()\n"
    code += "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert "--debug" in done.stdout
    assert done.stdout.strip().endswith("False False")  # help imports neither torch nor transformers


def test_a_config_error_names_where_each_value_came_from(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n  max_steps: many\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["train.bf16=3", Override("model.dtype=float8", "--dtype")])
    lines = str(caught.value).splitlines()
    assert lines[0] == "3 problem(s) in the configuration:"  # not blamed on run.yaml as a whole
    assert f"  {path}, line 3: train.max_steps = 'many': " in "\n".join(lines)
    assert any(line.startswith("  command line: train.bf16 = 3:") for line in lines)
    assert any(line.startswith("  --dtype: model.dtype = 'float8':") and "'float32'" in line for line in lines)


def test_errors_start_with_error_and_exit_2():
    usage = tunellm("chat", "--no-such-flag")
    assert usage.returncode == 2 and usage.stderr.startswith("error: No such option: --no-such-flag")
    assert "tunellm chat --help" in usage.stderr
    config = tunellm("config", "show", "max_steps=x")
    assert config.returncode == 2 and config.stderr.startswith("error: 1 problem(s)")
    assert "command line: train.max_steps = 'x'" in config.stderr
    merge = tunellm("merge", "somewhere", "--output", "out", "extra")  # an argument merge does not take
    assert merge.returncode == 2 and merge.stderr.startswith("error: unexpected argument(s): extra")


def test_the_generate_section_is_overridable_saved_and_takes_the_old_eval_key(tmp_path):
    config = load_config(None, ["generate.temperature=0.7", "top_k=20", "generate.stop=END", "eval.max_new_tokens=9"])
    assert (config.generate.temperature, config.generate.top_k, config.generate.stop) == (0.7, 20, ["END"])
    assert config.generate.max_new_tokens == 9  # eval.max_new_tokens now means generate.max_new_tokens
    saved = tmp_path / "config.yaml"  # what a checkpoint's config.yaml holds
    saved.write_text(to_yaml(config))
    assert yaml.safe_load(saved.read_text())["generate"]["temperature"] == 0.7
    assert load_config(saved) == config
    old = tmp_path / "old.yaml"  # a checkpoint written before the section existed
    old.write_text("eval:\n  max_new_tokens: 33\n  max_rows: 5\n")
    assert load_config(old).generate.max_new_tokens == 33
    both = tmp_path / "both.yaml"
    both.write_text("eval:\n  max_new_tokens: 33\ngenerate:\n  max_new_tokens: 44\n")
    assert load_config(both).generate.max_new_tokens == 44  # the new key wins
    options = SamplingOptions.from_config(config.generate)
    assert (options.temperature, options.top_k, options.stop, options.max_new_tokens) == (0.7, 20, ("END",), 9)
    with pytest.raises(ConfigError, match="generate.top_p = 2"):
        load_config(None, ["generate.top_p=2"])


def test_a_json_error_reads_well_and_a_record_error_suggests_skip_bad(tmp_path):
    rows = jsonl_rows("f.jsonl", '{"instruction": "a", "output": "b\n', "jsonl")
    message = str(rows[0][1])
    assert "unterminated string starting at column" in message.lower() and "at at" not in message
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3}\n')
    with pytest.raises(DataError) as caught:
        read_conversations([str(bad)], ReadOptions())
    assert caught.value.line == 2 and "--skip-bad" in str(caught.value)
    with pytest.raises(DataError) as missing:  # a whole-file problem cannot be skipped: no such hint
        read_conversations([str(tmp_path / "nope.jsonl")], ReadOptions())
    assert "--skip-bad" not in str(missing.value)


def test_written_folders_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        staging = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700, as merge's staging folder is
        weights = staging / "model.safetensors"
        weights.write_bytes(b"x")
        weights.chmod(0o600)  # as safetensors writes it
        usual_permissions(staging)
        assert (staging.stat().st_mode & 0o777, weights.stat().st_mode & 0o777) == (0o755, 0o644)
        os.umask(0o027)
        built = build_folder_atomically(tmp_path / "built", lambda folder: (folder / "a.json").write_text("{}"))
        assert (built.stat().st_mode & 0o777, (built / "a.json").stat().st_mode & 0o777) == (0o750, 0o640)
    finally:
        os.umask(old)


def test_stats_tokenizes_each_row_once(monkeypatch, default_tokenizer):
    from tunellm.data import inspect, tokenize
    from tunellm.data.read import ReadResult
    from tunellm.data.record import Conversation, Source, Turn
    from tunellm.data.templates import get_template

    calls = []
    real = tokenize.encode_texts
    monkeypatch.setattr(tokenize, "encode_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    talk = [Conversation([Turn("user", "hi " * n), Turn("assistant", "ok " * n)], Source("x", line=n)) for n in (1, 40)]
    template = get_template("alpaca", default_tokenizer)
    stats = inspect.compute_stats(
        ReadResult(conversations=talk), default_tokenizer, template, tokenize.TokenizeOptions(cutoff_len=60)
    )
    assert len(calls) == 1
    whole = tokenize.tokenize_conversations(
        talk, default_tokenizer, template, tokenize.TokenizeOptions(cutoff_len=1 << 30)
    )
    assert list(stats.prompt_lengths + stats.response_lengths) == list(whole.lengths)
    assert stats.truncated == 1  # the 40-word row passes 60 tokens


def test_stats_writes_a_histogram_only_when_asked(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "hi", "output": "hello"}) + "\n")
    monkeypatch.chdir(tmp_path)
    quiet = CliRunner().invoke(app, ["data", "stats", str(data), "--json"], catch_exceptions=False)
    assert quiet.exit_code == 0, quiet.output
    assert "histogram" not in json.loads(quiet.stdout) and not list(tmp_path.glob("*.png"))
    asked = CliRunner().invoke(app, ["data", "stats", str(data), "--json", "--histogram", "h.png"])
    assert json.loads(asked.stdout)["histogram"] == "h.png" and (tmp_path / "h.png").is_file()


def test_data_commands_load_the_tokenizer_without_torch(default_tokenizer):
    from tunellm.config.schema import ModelConfig
    from tunellm.models.tokenizer import load_tokenizer_and_template, model_location, plain_tokenizer_and_template

    code = (
        "import sys\nfrom tunellm.config.schema import ModelConfig\n"
        "from tunellm.models.tokenizer import load_tokenizer_and_template\n"
        "tokenizer, name = load_tokenizer_and_template(ModelConfig())\nprint(name, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert done.stdout.split() == ["hf_chat", "False"], done.stderr
    tokenizer, name = load_tokenizer_and_template(ModelConfig())  # the plain path gives what AutoTokenizer gives
    assert type(tokenizer) is type(default_tokenizer) and name == "hf_chat"
    assert tokenizer.chat_template == default_tokenizer.chat_template
    for text in ("Hello world", "你好，世界", "<|im_start|>user\nhi<|im_end|>"):
        assert tokenizer(text)["input_ids"] == default_tokenizer(text)["input_ids"]
    location, _ = model_location(ModelConfig())
    assert plain_tokenizer_and_template(location, None, ModelConfig(trust_remote_code=True)) is None


def test_the_server_fills_what_a_request_leaves_out_from_the_generate_section():
    from types import SimpleNamespace

    from tunellm.serve.app import sampling
    from tunellm.serve.protocol import ChatRequest, CompletionRequest
    from tunellm.serve.settings import ServeSettings

    config = load_config(None, ["generate.temperature=0.6", "generate.top_k=7", "generate.max_new_tokens=40"])
    served = SimpleNamespace(loaded=SimpleNamespace(config=config))
    settings = ServeSettings(max_tokens_cap=32)
    bare = sampling(ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}]), served, settings, 1000)
    assert (bare.temperature, bare.top_k, bare.max_new_tokens) == (0.6, 7, 32)  # 40, capped at 32
    asked = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=5)
    given = sampling(asked, served, settings, 1000)
    assert (given.temperature, given.max_new_tokens, given.top_k) == (0.0, 5, 7)
    assert sampling(CompletionRequest(model="m", prompt="hi"), served, settings, 1000).max_new_tokens == 16


CHECKPOINT_COMMANDS = [["chat", "--prompt", "x"], ["predict", "d.jsonl", "-o", "o.jsonl"], ["merge", "r", "-o", "out"]]


@pytest.mark.parametrize("command", CHECKPOINT_COMMANDS)
def test_a_mistyped_key_fails_before_the_model_stack_is_imported(command):
    code = f"import sys\nfrom tunellm.cli.main import main\nsys.argv = ['tunellm', *{command!r}, 'max_stepz=1']\n"
    code += "try:\n    main()\nexcept SystemExit as end:\n    print(end.code, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "command line: unknown key 'max_stepz'" in done.stderr and "did you mean" in done.stderr
