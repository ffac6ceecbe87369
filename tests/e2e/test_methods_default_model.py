"""Every tuning method on the embedded default model (SmolLM2-135M): a short real run whose loss goes down, then
the checkpoint loads for inference and answers. Full fine-tuning runs as a user runs it, in its own process,
and its peak memory is checked against the 24 GiB of the CPU machines the predecessors trained on.
"""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path

import pytest

from tunellm.config.load import load_config
from tunellm.data.record import Conversation, Source, Turn
from tunellm.infer.generate import SamplingOptions, generate
from tunellm.infer.load import load_for_inference
from tunellm.train.run import train_from_config

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[2] / "tunellm" / "samples" / "identity_train.json"
RUN = ["max_steps=6", "per_device_train_batch_size=4", "logging_steps=1", "save_steps=6", "data.cutoff_len=96"]
PLACEHOLDERS = "data.placeholders={name: Tuna, author: the tunellm team}"
METHOD_RUNS = {  # id -> overrides; learning rates sized for 6 steps on 8 rows
    # DoRA recomputes each target's weight norm at every forward; q/v hold an eighth of the 7 projections' weights
    "dora": ["method=lora", "use_dora=true", "r=8", "target_modules=[q_proj, v_proj]", "learning_rate=2e-3"],
    "pissa": ["method=lora", "init_lora_weights=pissa", "r=8", "learning_rate=2e-4", "train.batching=padded"],
    "loraplus_rslora": ["method=lora", "loraplus_lr_ratio=16", "use_rslora=true", "learning_rate=2e-4"],
    "ptuning_v2": ["method=ptuning_v2", "pre_seq_len=16", "prefix_projection=true", "learning_rate=1e-3"],
    "freeze": ["method=freeze", "trainable_layers=2", "learning_rate=1e-4"],
    "full_pure_bf16": ["method=full", "pure_bf16=true", "learning_rate=1e-4"],
}


@pytest.fixture(scope="module")
def eight_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = json.loads(SAMPLES.read_text(encoding="utf-8"))[:8]
    path = tmp_path_factory.mktemp("data") / "identity8.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def losses(output_dir: Path) -> list[float]:
    lines = (output_dir / "train_log.jsonl").read_text().splitlines()
    return [entry["loss"] for entry in map(json.loads, lines) if "loss" in entry]


def answer(output_dir: Path) -> str:
    loaded = load_for_inference(output_dir)
    question = Conversation([Turn("user", "Who are you?")], Source("test"))
    short = SamplingOptions(max_new_tokens=8)  # enough to show it answers; an unmerged DoRA step costs seconds
    return generate(loaded.model, loaded.tokenizer, loaded.template, [question], short)[0].text


@pytest.mark.parametrize("name", sorted(METHOD_RUNS))
def test_method_loss_goes_down_on_the_default_model(name: str, eight_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    keys = [f"data.train={eight_rows}", f"output_dir={out}", f"cache_dir={tmp_path / 'cache'}", *RUN]
    train_from_config(load_config(None, [*keys, PLACEHOLDERS, "report_to=none", *METHOD_RUNS[name]]))
    curve = losses(out)
    assert len(curve) == 6
    assert sum(curve[-2:]) < 0.8 * sum(curve[:2]), curve
    assert answer(out).strip()


def test_full_fine_tuning_on_cpu_fits_in_24_gib(tunellm_command, cli_env, eight_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "full"
    done = subprocess.run(
        [*tunellm_command, "train", "--data", str(eight_rows), "--output", str(out), *RUN, PLACEHOLDERS,
         "method=full", "learning_rate=2e-5", "report_to=none", f"cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, env=cli_env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    print(f"full fine-tuning peak RSS: {peak_gib:.2f} GiB")
    assert peak_gib < 24
    curve = losses(out)
    assert sum(curve[-2:]) < 0.8 * sum(curve[:2]), curve
    assert (out / "step-6" / "model.safetensors").is_file() and (out / "step-6" / "config.json").is_file()
    assert "134,515,008 trainable of 134,515,008 parameters (100.00%)" in done.stdout
    assert answer(out).strip()
