"""Reading, template choice and the cached tokenized set, as training and the data commands use them."""

from pathlib import Path

import pytest

from tunellm.config.schema import DataConfig
from tunellm.data.prepare import choose_template, tokenized_training_set
from tunellm.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def test_warm_cache_still_reports_skipped_records(tmp_path, default_tokenizer):
    faults = str(FIXTURES / "alpaca" / "faults.jsonl")
    data = DataConfig(train=[faults], skip_bad=True, cache_dir=str(tmp_path), template="alpaca")
    template = choose_template(data.train, data, default_tokenizer)
    cold = tokenized_training_set(data.train, data, default_tokenizer, template)
    warm = tokenized_training_set(data.train, data, default_tokenizer, template)
    assert not cold.report.from_cache and warm.report.from_cache
    assert "skipped" in cold.report.read_summary
    assert warm.report.read_summary == cold.report.read_summary
    assert f"{faults}, line 2" in warm.report.read_summary


def test_skip_bad_is_part_of_the_cache_key(tmp_path, default_tokenizer):
    faults = str(FIXTURES / "alpaca" / "faults.jsonl")
    data = DataConfig(train=[faults], skip_bad=True, cache_dir=str(tmp_path), template="alpaca")
    template = choose_template(data.train, data, default_tokenizer)
    tokenized_training_set(data.train, data, default_tokenizer, template)
    strict = data.model_copy(update={"skip_bad": False})
    with pytest.raises(DataError):  # a cached lenient run must not hide bad records from a strict one
        tokenized_training_set(strict.train, strict, default_tokenizer, template)


def test_plain_text_files_get_the_none_template(default_tokenizer):
    text = [str(FIXTURES / "text" / "good.txt")]
    assert choose_template(text, DataConfig(), default_tokenizer).name == "none"
    assert choose_template(["a.jsonl"], DataConfig(format="text"), default_tokenizer).name == "none"
    assert choose_template(["a.jsonl"], DataConfig(), default_tokenizer).name == "hf_chat"
    assert choose_template(["a.jsonl"], DataConfig(), default_tokenizer, "chatml").name == "chatml"


def test_text_records_under_a_chat_template_are_refused(tmp_path, default_tokenizer):
    rows = str(FIXTURES / "text" / "good.jsonl")
    data = DataConfig(train=[rows], cache_dir=str(tmp_path))
    template = choose_template(data.train, data, default_tokenizer)
    with pytest.raises(DataError, match="format=text"):
        tokenized_training_set(data.train, data, default_tokenizer, template)
