import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunellm.cli.main import app
from tunellm.config import RunConfig, load_config
from tunellm.config.example import example_yaml
from tunellm.config.load import resolve_key
from tunellm.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_then_dotted_and_bare_overrides(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 5\n  learning_rate: 1e-4\nmethod:\n  lora_rank: 4\n")
    config = load_config(path, ["train.max_steps=20", "learning_rate=3e-4", "data.train=a.json"])
    assert config.train.max_steps == 20
    assert config.train.learning_rate == pytest.approx(3e-4)
    assert config.method.r == 4  # peft's alias lora_rank lands on r
    assert config.data.train == ["a.json"]


def test_alias_override_replaces_yaml_alias(tmp_path):
    path = write(tmp_path, "method:\n  lora_rank: 4\n")
    assert load_config(path, ["r=16"]).method.r == 16
    assert load_config(path, ["lora_rank=32"]).method.r == 32


def test_override_values_are_typed():
    config = load_config(None, ["bf16=true", "data.train=[a.json, b.json]", "save_total_limit=null"])
    assert config.train.bf16 is True
    assert config.data.train == ["a.json", "b.json"]
    assert config.train.save_total_limit is None


def test_section_name_alone_picks_the_method():
    assert load_config(None, ["method=lora"]).method.name == "lora"


def test_every_problem_reported_at_once_with_key_value_and_allowed():
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["max_stepz=3", "learning_rate=-1", "lora_dropout=abc", "model.dtype=fp8"])
    text = str(caught.value)
    assert "4 problem(s)" in text
    assert "unknown key 'max_stepz'" in text and "did you mean 'max_steps'" in text
    assert "train.learning_rate = -1" in text and "greater than 0" in text
    assert "method.lora_dropout = 'abc'" in text
    assert "model.dtype = 'fp8'" in text and "'bfloat16'" in text


def test_unknown_key_in_yaml_names_file_and_suggests(tmp_path):
    path = write(tmp_path, "train:\n  learnig_rate: 0.1\nmodle: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert str(path) in text
    assert "modle: unknown section; did you mean 'model'" in text
    assert "train.learnig_rate: unknown key; did you mean 'learning_rate'" in text


def test_unknown_key_inside_a_section_suggests(tmp_path):
    path = write(tmp_path, "train:\n  learnig_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train.learnig_rate: unknown key; did you mean 'learning_rate'"):
        load_config(path)


def test_unknown_method_lists_allowed():
    with pytest.raises(ConfigError, match="lora"):
        load_config(None, ["method=ptuning"])


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="bf16 and fp16"):
        load_config(None, ["bf16=true", "fp16=true"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="line 2"):
        load_config(write(tmp_path, "train:\n  - [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_ambiguous_bare_key_is_an_error(monkeypatch):
    from tunellm.config import load as load_module

    monkeypatch.setattr(load_module, "field_names", lambda section: {"seed": "seed"})
    with pytest.raises(ConfigError, match="several sections"):
        resolve_key("seed")


def test_example_is_complete_and_loads_back(tmp_path):
    text = example_yaml()
    for section in RunConfig.model_fields:
        assert f"\n{section}:" in text
    config = load_config(write(tmp_path, text))
    assert config == RunConfig()


def test_cli_show_prints_resolved_config(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 5\n")
    result = CliRunner().invoke(app, ["config", "show", str(path), "lora_rank=12"])
    assert result.exit_code == 0, result.output
    assert "max_steps: 5" in result.output and "r: 12" in result.output


def test_cli_error_is_clean_and_exits_2():
    done = subprocess.run(
        [sys.executable, "-c", "from tunellm.cli.main import main; main()", "config", "show", "max_stepz=1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "did you mean 'max_steps'" in done.stderr
    assert "Traceback" not in done.stderr


def test_loading_config_imports_nothing_heavy():
    """Every method's options and every format name come from the plug-in modules, which load no torch."""
    code = (
        "import sys; from tunellm.config import load_config; load_config(None, ['max_steps=3']); "
        "[load_config(None, [f'method={m}', 'format=sharegpt']) for m in ('full', 'freeze', 'qlora', 'ptuning_v2')]; "
        "assert 'tunellm.methods.full' in sys.modules and 'tunellm.data.formats.sharegpt' in sys.modules; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("first", ["tunellm.methods.qlora", "tunellm.config.section", "tunellm.data.formats"])
def test_plugin_options_load_whichever_module_comes_first(first):
    """A plug-in module imports `config.section` while `config.schema` imports the plug-ins: no order may leave the
    config with a partial registry."""
    code = (
        f"import {first}; from tunellm.config.schema import RunConfig, FORMAT_NAMES; "
        "from tunellm.config.methods import METHOD_CONFIGS; from tunellm.methods import METHODS; "
        "from tunellm.data.formats import FORMATS; "
        "print(METHOD_CONFIGS == tuple(METHODS.get(n).Config for n in METHODS.names()) and len(METHOD_CONFIGS) > 4, "
        "FORMAT_NAMES == ('auto', *FORMATS.names()) and len(FORMAT_NAMES) > 7, "
        "RunConfig(method={'name': 'full'}).method.name)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "full"]


def test_config_choices_are_the_registries():
    from tunellm.config.methods import METHOD_CONFIGS
    from tunellm.config.schema import FORMAT_NAMES, DataConfig
    from tunellm.data.formats import FORMATS
    from tunellm.methods import METHODS

    assert ("auto", *FORMATS.names()) == FORMAT_NAMES
    assert DataConfig.model_fields["format"].annotation.__args__ == FORMAT_NAMES
    for name in FORMATS.names():
        assert load_config(None, [f"format={name}"]).data.format == name
    with pytest.raises(ConfigError, match="data.format = 'alpacca'"):
        load_config(None, ["format=alpacca"])
    assert tuple(METHODS.get(name).Config for name in METHODS.names()) == METHOD_CONFIGS
    for name in METHODS.names():
        assert isinstance(load_config(None, [f"method={name}"]).method, METHODS.get(name).Config)


@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")))
def test_shipped_example_configs_validate(example):
    config = load_config(example)
    assert config.data.train and config.train.output_dir.startswith("runs/")
