"""A packed and a padded run of the default model on the same rows give the same loss curve over 10 steps.

The rows all have one length and the token budget holds exactly 4 of them, so both runs train the same rows in
the same order at every step; only the layout differs (one packed row with restarting positions against 4 padded
rows with an attention mask). 20 rows make 5 steps an epoch, so the curve crosses an epoch's reshuffle; a one-word
system line keeps the rows at 36 tokens instead of 50 (the test is about the layout, not the prompt)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tunellm.config.schema import DataConfig
from tunellm.data.prepare import choose_template, tokenized_training_set

STEPS = 10
SYSTEM = "Add."  # a one-word system line: short rows


@pytest.mark.slow
def test_packed_and_padded_runs_give_the_same_loss_curve(tunellm_command, cli_env, default_tokenizer, tmp_path):
    rows = [
        {"instruction": "Add the two numbers.", "input": f"{a} and {a + 111}", "output": f"{2 * a + 111}."}
        for a in range(200, 220)
    ]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = DataConfig(train=[str(data)], cache_dir=str(tmp_path / "cache"), system=SYSTEM)
    template = choose_template(config.train, config, default_tokenizer)
    lengths = set(tokenized_training_set(config.train, config, default_tokenizer, template).lengths.tolist())
    assert len(lengths) == 1, lengths  # the premise: one length, so a budget of 4 rows holds exactly 4
    budget = 4 * lengths.pop()

    def start(batching: str) -> subprocess.Popen:
        out = tmp_path / batching
        args = ["train", "--data", str(data), "--output", str(out), f"max_steps={STEPS}", "logging_steps=1"]
        args += ["per_device_train_batch_size=4", f"tokens_per_batch={budget}", f"batching={batching}"]
        args += ["lora_dropout=0", "save_steps=100", "report_to=none", f"cache_dir={tmp_path / 'cache'}"]
        args.append(f"data.system={SYSTEM}")
        return subprocess.Popen([*tunellm_command, *args], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip

    runs = {batching: start(batching) for batching in ("packed", "padded")}  # side by side, one thread each
    curves = {}
    for batching, process in runs.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        assert f"batching: {batching}" in err or batching == "padded"
        log = [json.loads(line) for line in (tmp_path / batching / "train_log.jsonl").read_text().splitlines()]
        curves[batching] = [entry["loss"] for entry in log if "loss" in entry]
    assert len(curves["packed"]) == len(curves["padded"]) == STEPS
    assert curves["packed"] == pytest.approx(curves["padded"], rel=2e-3)
    assert curves["packed"][-1] < 0.8 * curves["packed"][0]  # it learned, so the curves say something
