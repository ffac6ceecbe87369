"""tunellm against LLaMA-Factory 0.9.5 at equal steps (issue 10), both scored by tunellm's metric code.

    python bench/vs_llamafactory.py --seeds 1 2 3          # the full comparison (60 steps, ~124 scored rows)
    python bench/vs_llamafactory.py --quick --seeds 1      # the whole pipeline in a few minutes (6 steps, 12 rows)
    python bench/vs_llamafactory.py --tools llamafactory --cross --seeds 1   # also LF's adapter via `tunellm eval`
    python bench/vs_llamafactory.py --task transformers_tasks --seeds 1 2 3 4 5  # extraction + classification

Tasks: `chip_ctc` (PromptCBLUE CHIP-CTC: every fifth row held out, 124 scored rows, choice accuracy, answers of up
to 24 tokens) and `transformers_tasks` (its mixed extraction + classification set: trained on the 732 train rows,
scored on the 92 dev rows by IE triple F1 and label accuracy, answers of up to 160 tokens, as
examples/transformers_tasks.yaml does).

LLaMA-Factory goes into its own virtualenv (bench/.venvs/llamafactory, git-ignored): torch 2.13.0 and its
requirements minus torchvision, transformers <= 5.6, then llamafactory itself without dependencies. Every
training and every generation runs in its own process. Splits, configs, adapters and answers go to
bench/.vs_llamafactory/<task>_<full|quick> (git-ignored: the data is for research only and must not be
committed). Each run's answers are scored with tunellm's metric code; the summary prints mean and spread per tool
and a paired per-row comparison. Neither tool checkpoints activations (LLaMA-Factory would by default: the same
gradients, with the forward run again in the backward).
A step whose outputs are already in the work folder (an adapter, a predictions file) is reused, so an
interrupted comparison resumes; delete the folder to measure again. Each run that trained or generated something
is also logged to results.jsonl there. --cross also generates with each adapter through the other tool (LF's
adapter via `tunellm eval`, tunellm's via LF's predict).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from vs_llamafactory_report import summarize  # bench/ is on sys.path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venvs" / "llamafactory"
WORK = BENCH / ".vs_llamafactory"
DATA = Path(os.environ.get("TUNELLM_SHARED_DATA", REPO.parent / "shared" / "data"))
CTC = "promptcblue/aug/CHIP-CTC-822.json"
TT_TRAIN, TT_DEV = "transformers_tasks/mixed_train_dataset.jsonl", "transformers_tasks/mixed_dev_dataset.jsonl"
LF_VERSION = "0.9.5"
TUNELLM = [sys.executable, "-m", "tunellm"]
LF_ENV = {"PYTHONPATH": "", "DISABLE_VERSION_CHECK": "1", "CUDA_VISIBLE_DEVICES": "", "WANDB_DISABLED": "true"}
# the settings, shared by both tools
STEPS, QUICK_STEPS, QUICK_ROWS = 60, 6, 12
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR, WARMUP, BATCH, CUTOFF = 5e-4, 0.05, 4, 512


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run `cmd` (niced like this process) with output to `log`; its wall seconds. Stops on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    took = time.perf_counter() - start
    if code:
        sys.exit(f"failed ({code}) after {took:.0f}s: {' '.join(cmd)}\n--- last lines of {log}:\n" + tail(log))
    return took


def tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def install_llamafactory() -> Path:
    """The venv's python, installing LLaMA-Factory into it on first use."""
    python = VENV / "bin" / "python"
    if (VENV / ".installed").is_file():
        return python
    subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(python), "-m", "pip", "install", "-q"]
    wheels = WORK / "wheels"
    subprocess.check_call([*pip[:-2], "download", "-q", "--no-deps", f"llamafactory=={LF_VERSION}", "-d", str(wheels)])
    wheel = next(wheels.glob(f"llamafactory-{LF_VERSION}-*.whl"))
    meta = zipfile.ZipFile(wheel).read(f"llamafactory-{LF_VERSION}.dist-info/METADATA").decode()
    reqs = [line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist: ")]
    # torch is pinned to the CPU build on disk; torchvision is left out; transformers <= 5.6 (LF's own bound)
    keep = [r for r in reqs if "extra ==" not in r and r.split("<")[0].split(">")[0].split("=")[0].split("!")[0]
            not in ("torch", "torchvision", "transformers")]  # fmt: skip
    constraints = WORK / "constraints.txt"
    WORK.mkdir(parents=True, exist_ok=True)
    constraints.write_text("torch==2.13.0\n")
    subprocess.check_call([*pip, "-c", str(constraints), "torch==2.13.0", "transformers>=4.55,<=5.6.0,!=4.57.0", *keep])
    subprocess.check_call([*pip, "--no-deps", str(wheel)])
    # predict_with_generate refuses to start without its metric packages (its undeclared "metrics" extra)
    subprocess.check_call([*pip, "-c", str(constraints), "jieba", "nltk", "rouge-chinese"])
    cuda = [line.split("==")[0] for line in subprocess.check_output([str(python), "-m", "pip", "freeze"]).decode()
            .splitlines() if line.lower().startswith("nvidia-")]  # fmt: skip
    if cuda:  # torchaudio may pull CUDA libraries; LF imports torchaudio on every run, which works without them
        subprocess.check_call([str(python), "-m", "pip", "uninstall", "-y", "-q", *cuda])
    # torchaudio's compiled extension is a CUDA build that needs libc10_cuda.so; without its .so files
    # torchaudio imports as pure Python (LF imports it on every run but never calls its kernels here)
    for lib in VENV.glob("lib/python*/site-packages/torchaudio/lib/*.so"):
        lib.unlink()
    (VENV / ".installed").write_text(LF_VERSION + "\n")
    return python


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ctc_split() -> tuple[list[dict], list[dict]]:
    """Every fifth CHIP-CTC row held out for scoring, the rest trained on."""
    rows = read_jsonl(DATA / CTC)
    return [row for i, row in enumerate(rows) if i % 5 != 4], [row for i, row in enumerate(rows) if i % 5 == 4]


def transformers_tasks_split() -> tuple[list[dict], list[dict]]:
    """transformers_tasks' own split: its train file trained on, its dev file scored."""
    return read_jsonl(DATA / TT_TRAIN), read_jsonl(DATA / TT_DEV)


@dataclass(frozen=True)
class Task:
    """One comparison: its rows, the field holding the prompt, tunellm's reader for them, the answer length and
    the scores the summary prints."""

    name: str
    split: Callable[[], tuple[list[dict], list[dict]]]
    prompt: str
    format: str
    new_tokens: int
    metrics: tuple[str, ...]


TASKS = {
    "chip_ctc": Task("chip_ctc", ctc_split, "input", "promptcblue", 24, ("accuracy", "answer_parse_rate", "macro_f1")),
    "transformers_tasks": Task("transformers_tasks", transformers_tasks_split, "context", "context_target", 160,
                               ("accuracy", "answer_parse_rate", "ie_f1", "ie_parse_rate")),
}  # fmt: skip


def build_split(task: Task, folder: Path, quick: bool) -> tuple[list[dict], list[dict]]:
    """The task's train and held-out rows, written in both tools' formats into `folder`."""
    train, held = task.split()
    if quick:
        held = held[:: max(1, len(held) // QUICK_ROWS)][:QUICK_ROWS]
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", train), ("heldout.jsonl", held)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    for name, part in (("lf_train.json", train), ("lf_heldout.json", held)):
        alpaca = [{"instruction": r[task.prompt], "input": "", "output": r["target"]} for r in part]
        (folder / name).write_text(json.dumps(alpaca, ensure_ascii=False, indent=0), encoding="utf-8")
    info = {name: {"file_name": f"{name}.json"} for name in ("lf_train", "lf_heldout")}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return train, held


def default_model() -> str:
    sys.path.insert(0, str(REPO))
    from tunellm.models.default import default_model_dir

    return str(default_model_dir())


def lf_common(folder: Path, model: str, seed: int) -> dict:
    return {
        "model_name_or_path": model, "template": "smollm2", "dataset_dir": str(folder), "cutoff_len": CUTOFF,
        "overwrite_cache": True, "preprocessing_num_workers": 1, "dataloader_num_workers": 0, "report_to": "none",
        "bf16": False, "fp16": False, "seed": seed, "trust_remote_code": False, "stage": "sft",
        "finetuning_type": "lora",
    }  # fmt: skip


def write_yaml(path: Path, body: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, allow_unicode=True, sort_keys=False))
    return path


def lf_train_config(folder: Path, model: str, seed: int, steps: int) -> Path:
    """LLaMA-Factory's training YAML for one seed; the adapter goes to lf_seedN/adapter."""
    out = folder / f"lf_seed{seed}"
    train = {
        # tunellm does not checkpoint activations here either; LF's default recomputes the forward (same gradients)
        "disable_gradient_checkpointing": True,
        **lf_common(folder, model, seed), "do_train": True, "lora_target": "all", "lora_rank": LORA["r"],
        "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"], "dataset": "lf_train",
        "output_dir": str(out / "adapter"), "overwrite_output_dir": True, "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": 1, "learning_rate": LR, "max_steps": steps, "lr_scheduler_type": "cosine",
        "warmup_ratio": WARMUP, "logging_steps": 1, "save_strategy": "no", "plot_loss": False,
    }  # fmt: skip
    return write_yaml(out / "train.yaml", train)


def lf_predict_config(task: Task, folder: Path, model: str, seed: int, adapter: Path, out: Path) -> Path:
    """LLaMA-Factory's greedy predict on the held-out rows with `adapter` (any peft LoRA folder) into `out`."""
    predict = {
        **lf_common(folder, model, seed), "do_predict": True, "adapter_name_or_path": str(adapter),
        "eval_dataset": "lf_heldout", "output_dir": str(out), "overwrite_output_dir": True,
        "per_device_eval_batch_size": 8, "predict_with_generate": True, "do_sample": False,
        "max_new_tokens": task.new_tokens,
    }  # fmt: skip
    return write_yaml(out.parent / f"{out.name}.yaml", predict)


def lf_predict(task: Task, folder: Path, model: str, seed: int, adapter: Path, out: Path) -> tuple[float, list[str]]:
    """(seconds or None when reused, answers) of LLaMA-Factory's own predict with `adapter`."""
    answers = out / "generated_predictions.jsonl"
    took = None
    if not answers.is_file():
        config = lf_predict_config(task, folder, model, seed, adapter, out)
        took = run([*lf_cli(), "train", str(config)], out.parent / f"{out.name}.log", LF_ENV)
    return took, read_outputs(answers, "predict")


def lf_cli() -> list[str]:
    return [str(install_llamafactory()), "-m", "llamafactory.cli"]


def tunellm_config(task: Task, folder: Path, model: str, seed: int, steps: int) -> Path:
    sys.path.insert(0, str(REPO))
    from tunellm.config.schema import TrainConfig

    out = folder / f"tunellm_seed{seed}"
    train = {
        "output_dir": str(out / "run"), "per_device_train_batch_size": BATCH, "gradient_accumulation_steps": 1,
        "max_steps": steps, "learning_rate": LR, "lr_scheduler_type": "cosine", "warmup_ratio": WARMUP,
        "seed": seed, "logging_steps": 1, "save_steps": 20, "resume": "auto", "report_to": [],
    }  # fmt: skip
    # checkpoints every 20 steps and resume auto: a run stopped on a busy shared machine continues where it was
    if "batching" in TrainConfig.model_fields:  # today's reference path, when other branches add packing
        train["batching"] = "padded"
    config = {
        "model": {"name_or_path": model, "dtype": "float32"},
        "data": {"train": [str(folder / "train.jsonl")], "format": task.format, "cutoff_len": CUTOFF},
        "method": {"name": "lora", "r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"],
                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "train": train,
        "eval": {"max_new_tokens": task.new_tokens},
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return path


def tunellm_eval(task: Task, folder: Path, adapter: Path, out: Path) -> tuple[float | None, list[str]]:
    """(seconds or None when reused, answers) of `tunellm eval` on the held-out rows with `adapter`."""
    answers = out / "predictions.jsonl"
    took = None
    if not answers.is_file():
        cmd = [*TUNELLM, "eval", str(folder / "heldout.jsonl"), "--adapter", str(adapter), "--max-new-tokens",
               str(task.new_tokens), "--batch-size", "8", "--output", str(out), "--no-progress"]  # fmt: skip
        took = run(cmd, out.parent / f"{out.name}.log", {"PYTHONPATH": str(REPO)})
    return took, read_outputs(answers, "output")


def read_outputs(path: Path, key: str) -> list[str]:
    return [row[key] for row in read_jsonl(path)]


def score(task: Task, outputs: list[str], held: list[dict]) -> dict[str, float | list[float]]:
    """tunellm's scores of `outputs` against the held-out rows (the task's metrics, the majority baseline, rows
    scored), and per row for the paired comparison: `per_row`, its score (1/0 for a label, triple F1 for an
    extraction), and `per_row_parsed`, whether its answer was read as a label (or a whole JSON list)."""
    sys.path.insert(0, str(REPO))
    from tunellm.evaluate.metrics import score_rows
    from tunellm.evaluate.tasks import EvalRow, detect_kinds

    if len(outputs) != len(held):
        sys.exit(f"{len(outputs)} answers for {len(held)} held-out rows")
    extras = [{k: v for k, v in row.items() if k not in (task.prompt, "target")} for row in held]
    kinds = detect_kinds([row["target"] for row in held], extras)
    rows = [EvalRow(o, r["target"], e, k, "all") for o, r, e, k in zip(outputs, held, extras, kinds, strict=True)]
    result = score_rows(rows)
    keys = [*task.metrics, "majority_accuracy"]
    alone = [score_rows([row]) for row in rows]
    extraction = [row.kind == "extraction" for row in rows]
    per_row = [one.get("ie_f1" if ie else "accuracy", 0.0) for one, ie in zip(alone, extraction, strict=True)]
    parsed = [
        one.get("ie_parse_rate" if ie else "answer_parse_rate", 0.0) for one, ie in zip(alone, extraction, strict=True)
    ]
    return {key: round(result[key], 4) for key in keys if key in result} | {
        "scored": result["scored"].get("choice_accuracy", 0) + result["scored"].get("ie_f1", 0),
        "per_row": [round(value, 4) for value in per_row],
        "per_row_parsed": parsed,
    }


def run_llamafactory(task: Task, folder: Path, model: str, seed: int, steps: int, cross: bool,
                     held: list[dict]) -> list[dict]:  # fmt: skip
    out = folder / f"lf_seed{seed}"
    train_s = None
    if not (out / "adapter" / "adapter_model.safetensors").is_file():
        train_s = run([*lf_cli(), "train", str(lf_train_config(folder, model, seed, steps))], out / "train.log", LF_ENV)
    gen_s, answers = lf_predict(task, folder, model, seed, out / "adapter", out / "predict")
    results = [{"tool": "llamafactory", "seed": seed, "train_s": seconds(train_s), "gen_s": seconds(gen_s),
                **score(task, answers, held), "loss": lf_losses(out / "adapter")}]  # fmt: skip
    if cross:  # LF's adapter, generated by tunellm eval with tunellm's own prompt (template auto: hf_chat)
        gen_s, answers = tunellm_eval(task, folder, out / "adapter", out / "tunellm_eval")
        results.append({"tool": "llamafactory adapter, tunellm eval", "seed": seed, "gen_s": seconds(gen_s),
                        **score(task, answers, held)})  # fmt: skip
    return results


def seconds(took: float | None) -> int | str:
    """Wall seconds, or 'reused' for a step whose outputs were already there."""
    return "reused" if took is None else round(took)


def fresh_runs(results: list[dict]) -> list[dict]:
    """The results that trained or generated something: results.jsonl logs runs, so a summary rerun adds none."""
    return [r for r in results if any(r.get(key, "reused") != "reused" for key in ("train_s", "gen_s"))]


def lf_losses(folder: Path) -> dict[int, float]:
    state = folder / "trainer_state.json"
    if not state.is_file():
        return {}
    logs = json.loads(state.read_text())["log_history"]
    return {e["step"]: round(e["loss"], 3) for e in logs if "loss" in e and e["step"] in (1, 10, 20, 40, 60)}


def run_tunellm(task: Task, folder: Path, model: str, seed: int, steps: int, cross: bool,
                held: list[dict]) -> list[dict]:  # fmt: skip
    config = tunellm_config(task, folder, model, seed, steps)
    out = config.parent
    train_s = None
    if not (out / "run" / f"step-{steps}" / "adapter_model.safetensors").is_file():
        train_s = run([*TUNELLM, "train", str(config)], out / "train.log", {"PYTHONPATH": str(REPO)})
    gen_s, answers = tunellm_eval(task, folder, out / "run", out / "eval")
    results = [{"tool": "tunellm", "seed": seed, "train_s": seconds(train_s), "gen_s": seconds(gen_s),
                **score(task, answers, held), "loss": tunellm_losses(out / "run")}]  # fmt: skip
    if cross:  # tunellm's adapter, generated by LLaMA-Factory's predict with its smollm2 template
        gen_s, answers = lf_predict(task, folder, model, seed, out / "run" / f"step-{steps}", out / "lf_predict")
        results.append({"tool": "tunellm adapter, llamafactory predict", "seed": seed, "gen_s": seconds(gen_s),
                        **score(task, answers, held)})  # fmt: skip
    return results


def tunellm_losses(folder: Path) -> dict[int, float]:
    log = folder / "train_log.jsonl"
    if not log.is_file():
        return {}
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {e["step"]: round(e["loss"], 3) for e in lines if "loss" in e and e.get("step") in (1, 10, 20, 40, 60)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="chip_ctc")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tools", nargs="+", default=["tunellm", "llamafactory"], choices=["tunellm", "llamafactory"])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps, {QUICK_ROWS} scored rows")
    parser.add_argument("--cross", action="store_true", help="also each adapter through the other tool's generation")
    parser.add_argument("--work", type=Path, default=WORK, help="folder for splits, configs, adapters, answers")
    args = parser.parse_args()
    task = TASKS[args.task]
    folder = args.work / f"{task.name}_{'quick' if args.quick else 'full'}"
    steps = QUICK_STEPS if args.quick else STEPS
    _, held = build_split(task, folder, args.quick)
    model = default_model()
    results: list[dict] = []
    for seed in args.seeds:
        for tool in args.tools:
            run_tool = run_tunellm if tool == "tunellm" else run_llamafactory
            got = run_tool(task, folder, model, seed, steps, args.cross, held)
            results += got
            shown = [{k: v for k, v in r.items() if not k.startswith("per_row")} for r in got]
            print(json.dumps(shown, ensure_ascii=False), flush=True)
            with (folder / "results.jsonl").open("a") as log:
                log.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh_runs(got))
    print(summarize(task.metrics, results))


if __name__ == "__main__":
    main()
