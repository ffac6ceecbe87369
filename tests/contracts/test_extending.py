"""The worked examples of docs/EXTENDING.md (docs/examples/extending/*.py), each loaded as a plug-in and run
through its kind's contract, so the recipe cannot drift from the code. The registries are restored after each test.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tunellm.data.formats import FORMATS, ReadOptions
from tunellm.data.read import read_conversations
from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import TEMPLATES, get_template
from tunellm.errors import DataError
from tunellm.evaluate.metrics import METRICS, higher_is_better, metric_of, score_rows
from tunellm.evaluate.tasks import EvalRow
from tunellm.methods import METHODS
from tunellm.models.families import FAMILIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "extending"


def load(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    name = f"extending_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # a method registers its module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch):
    """`plugin(stem)` runs an example file, which registers its plug-in for this test only."""
    for registry in (FORMATS, TEMPLATES, FAMILIES, METHODS, METRICS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    return lambda stem: load(EXAMPLES / f"{stem}.py", monkeypatch)


@pytest.fixture
def contract(monkeypatch: pytest.MonkeyPatch):
    """`contract("unit/test_formats")`: a contract test module, whose checks are called with the example's name."""
    return lambda path: load(ROOT / "tests" / f"{path}.py", monkeypatch)


def test_format_example_reads_rows(plugin, contract, tmp_path: Path) -> None:
    plugin("qa_format")
    rows = [{"question": "2+2?", "answer": "4", "topic": "maths"}, {"question": "3+3?"}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = read_conversations([str(path)], ReadOptions(), skip_bad=True)  # auto-detected
    assert result.formats == {str(path): "qa"}
    record = result.conversations[0]
    assert record.turns == [Turn("user", "2+2?"), Turn("assistant", "4")] and record.extra == {"topic": "maths"}
    assert [(error.line, error.field) for error in result.bad] == [(2, "answer")]
    with pytest.raises(DataError, match="line 2"):
        read_conversations([str(path)], ReadOptions(), format="qa")
    formats = contract("unit/test_formats")
    formats.test_examples_are_recognised_and_convert("qa")
    formats.test_columns_map_every_canonical_field("qa", tmp_path)


def test_template_example_renders(plugin, contract, default_tokenizer) -> None:
    plugin("vicuna_template")
    template = get_template("vicuna", default_tokenizer)
    prompt = Conversation([Turn("user", "Hi")], Source("<example>"))
    text = "".join(segment.text for segment in template.render(prompt, for_generation=True))
    assert text == template.default_system + " USER: Hi ASSISTANT:"
    reply = Conversation([Turn("user", "Hi"), Turn("assistant", "Hello"), Turn("user", "Bye")], Source("<example>"))
    segments = template.render(reply, for_generation=True)
    assert [s.text for s in segments if s.trainable] == [" Hello" + default_tokenizer.eos_token]
    assert segments[-1].text == "USER: Bye ASSISTANT:"
    templates = contract("unit/test_templates")
    for chat in templates.CHATS:
        templates.test_training_prompt_equals_generation_prompt(default_tokenizer, "vicuna", chat)
    templates.test_every_reply_ends_with_the_end_of_turn(default_tokenizer, "vicuna")
    templates.test_generation_needs_a_last_user_turn(default_tokenizer, "vicuna")
    exported = copy.deepcopy(default_tokenizer)  # the Jinja export renders alike
    exported.chat_template = template.chat_template()
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    messages.append({"role": "user", "content": "Bye"})
    conversation = Conversation([Turn(m["role"], m["content"]) for m in messages], Source("<example>"))
    rendered = exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "".join(segment.text for segment in template.render(conversation, for_generation=True))


def test_family_example_loads_a_tiny_model_and_trains(plugin, contract, tmp_path: Path) -> None:
    family = plugin("starcoder2_family").FAMILY
    families = contract("contracts/test_families")
    folder = tmp_path / "tiny"
    families.build_native(family.tiny_config(), folder)
    families.tiny_tokenizer().save_pretrained(folder)
    families.test_family_contract("starcoder2", {"starcoder2": folder}, tmp_path / "adapter")


def test_method_example_trains_through_the_contract(plugin, contract, tmp_path: Path) -> None:
    method = plugin("norm_tuning_method")
    assert METHODS.get("norm_tuning") is method
    methods = contract("contracts/test_methods")
    folder = methods.build_tiny("llama", tmp_path / "tiny")
    for name, variant in method.contract_variants().items():
        (tmp_path / name).mkdir()
        methods.check_variant(method, variant, folder, tmp_path / name)


def test_metric_example_scores(plugin) -> None:
    module = plugin("char_f1_metric")
    assert module.char_f1("北京市", "北京") == pytest.approx(0.8)  # precision 2/3, recall 1
    assert module.char_f1(" Paris. ", "paris") == 1.0 and module.char_f1("abc", "xyz") == 0.0
    assert module.char_f1("", "") == 1.0 and module.char_f1("", "a") == 0.0
    rows = [EvalRow("北京市", "北京"), EvalRow("abc", "xyz"), EvalRow("A", "B", kind="choice")]
    result = score_rows(rows)
    assert result["char_f1"] == pytest.approx(0.4) and result["scored"]["char_f1"] == 2  # text rows only
    assert metric_of("char_f1") is METRICS.get("char_f1") and higher_is_better("char_f1")


def test_format_and_method_examples_join_the_config_without_torch(tmp_path: Path) -> None:
    """Registered before the config first loads (as the import line in the plug-in folder does), an example's
    name and options are accepted by the config, and loading it imports no torch."""
    (tmp_path / "run.yaml").write_text("data:\n  format: qa\nmethod:\n  name: norm_tuning\n  pattern: layernorm\n")
    code = (
        "import importlib.util, sys\n"
        f"for stem in ('qa_format', 'norm_tuning_method'):\n"
        f"    spec = importlib.util.spec_from_file_location(stem, {str(EXAMPLES)!r} + '/' + stem + '.py')\n"
        "    module = sys.modules[stem] = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "from tunellm.config import load_config\n"
        f"config = load_config({str(tmp_path / 'run.yaml')!r})\n"
        "print(config.data.format, config.method.name, config.method.pattern, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["qa", "norm_tuning", "layernorm", "False"]
