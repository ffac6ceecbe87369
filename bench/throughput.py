"""Real (non-pad) training tokens/s of tunellm against the peer stacks, in one run, each stack in its own process.

Stacks (throughput_row.py runs one): the predecessor stack `transformers.Trainer` + peft with rows padded to the
longest of the batch (DataCollatorForSeq2Seq) in random order; the same with `group_by_length=True`; the same with
transformers' own padding-free `DataCollatorWithFlattening`; tunellm `padded`; tunellm `packed` (the default,
with the chunked loss). Every stack: LoRA r=8, alpha 16, dropout 0.05 on the 7 projections, AdamW lr 2e-4
constant, clipping 1.0, seed 42; fp32 on the CPU, bf16 autocast on CUDA.

Data: the first `--rows` (2,000) alpaca rows with a non-empty output from ../shared/data/alpaca, rendered with the
alpaca template, prompts masked, cutoff 1,024, tokenized once by tunellm with the default tokenizer (ids taken
modulo the vocabulary for the other shapes). Same real tokens per optimizer step for every stack:
`--tokens-per-step` for tunellm packed; round(tokens / mean row length) rows for the row-batched stacks.

Rounds (`--rounds`) run the stacks in turn, alternating the order, and report each stack's median real tokens/s
over steps after the first `--warmup`; losses are those of the first round. Then (`--rss-tokens`, 0 to skip)
one step of tunellm packed and of the flattening peer at that many tokens per step, with activation
checkpointing, for the peak RSS. A watchdog kills a child past `--rss-limit-gib` (the machine is shared).

    nice -n 10 .venv/bin/python bench/throughput.py --device cpu
    .venv/bin/python bench/throughput.py --shape tiny --steps 4 --rounds 1 --rss-tokens 2048   # end to end check
GPU (a device run; the wheels travel as bench/methods_memory.py describes; the 7B shape is built at random):
    python3 bench/throughput.py --device cuda --shape 7b --model-dir /tmp/llama7b --tokens-per-step 16384
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from throughput_row import STACKS  # noqa: E402

ALPACA = next(  # ../shared beside the checkout (a worktree sits one level deeper)
    (p / "shared/data/alpaca/alpaca_data.json.gz" for p in ROOT.parents if (p / "shared/data/alpaca").is_dir()),
    ROOT.parent / "shared/data/alpaca/alpaca_data.json.gz",
)
# peers and tunellm alternate; the last is tunellm packed with train.loss=reference: what the chunked loss buys
MAIN_STACKS = ["trainer_padded", "tunellm_packed", "trainer_flatten", "tunellm_padded", "trainer_grouped"]
MAIN_STACKS.append("tunellm_packed_reference")


def prepare_rows(source: Path, count: int, cutoff: int, folder: Path) -> tuple[Path, float]:
    """Tokenize the first `count` rows as tunellm train does; save ids/labels/offsets; return (file, mean length)."""
    import numpy as np

    from tunellm.config.schema import DataConfig, ModelConfig
    from tunellm.data.prepare import choose_template, tokenized_training_set
    from tunellm.models.load import load_tokenizer_and_template

    with gzip.open(source, "rt", encoding="utf-8") as handle:
        rows = [row for row in json.load(handle) if row.get("output", "").strip()][:count]
    data_file = folder / "alpaca.json"
    data_file.write_text(json.dumps(rows), encoding="utf-8")
    data = DataConfig(train=[str(data_file)], template="alpaca", cutoff_len=cutoff, cache_dir=str(folder / "cache"))
    tokenizer, family_template = load_tokenizer_and_template(ModelConfig())
    template = choose_template(data.train, data, tokenizer, family_template)
    dataset = tokenized_training_set(data.train, data, tokenizer, template)
    out = folder / "rows.npz"
    np.savez(out, input_ids=dataset.input_ids, labels=dataset.labels, offsets=dataset.offsets)
    return out, float(np.mean(dataset.lengths))


def run_child(stack: str, args: argparse.Namespace, rows: Path, **overrides: object) -> dict:
    """One stack in its own process, killed when its RSS passes the limit."""
    options = {"steps": args.steps, "rows_per_step": args.rows_per_step, "tokens_per_step": args.tokens_per_step}
    options.update(overrides)
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [sys.executable, str(Path(__file__).with_name("throughput_row.py")), "--stack", stack]
    command += ["--device", args.device, "--rows", str(rows), "--cutoff", str(args.cutoff), "--out", str(out)]
    command += [f"--{key.replace('_', '-')}={value}" for key, value in options.items() if key != "checkpointing"]
    command += ["--checkpointing"] if options.get("checkpointing") else []
    command += ["--model-dir", args.model_dir] if args.model_dir else []
    command += ["--threads", str(args.threads)] if args.threads else []
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    peak, killed = 0.0, False
    while child.poll() is None:
        rss = rss_gib(child.pid)
        peak = max(peak, rss)
        if rss > args.rss_limit_gib:
            child.kill()
            killed = True
        time.sleep(0.2)
    err = child.stderr.read()
    if killed:
        return {"stack": stack, "error": f"killed past {args.rss_limit_gib} GiB RSS", "peak_rss_gib": peak}
    if child.returncode != 0:
        return {"stack": stack, "error": err.strip().splitlines()[-1] if err.strip() else f"rc {child.returncode}"}
    result = json.loads(out.read_text(encoding="utf-8"))
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def speed(result: dict, warmup: int, clock: str = "seconds") -> float | None:
    """Real tokens per second of `clock`: wall (seconds) or the process's CPU time (cpu_seconds)."""
    timed = result.get("steps", [])[warmup:]
    seconds = sum(step[clock] for step in timed)
    return sum(step["tokens"] for step in timed) / seconds if seconds > 0 else None


def report(rounds: list[list[dict]], rss: list[dict], args: argparse.Namespace, mean_len: float) -> dict:
    summary = {}
    for stack in args.stacks:
        results = [r for one in rounds for r in one if r["stack"] == stack]
        speeds = [s for s in (speed(r, args.warmup) for r in results) if s is not None]
        first = next((r for r in results if "steps" in r), {})
        summary[stack] = {
            "tokens_per_s": statistics.median(speeds) if speeds else None,
            "tokens_per_cpu_s": statistics.median(
                [s for s in (speed(r, args.warmup, "cpu_seconds") for r in results) if s is not None] or [0]
            ),
            "tokens_per_s_each_round": [round(s, 1) for s in speeds],
            "real_tokens_per_step": statistics.mean(s["tokens"] for s in first["steps"]) if first else None,
            "peak_rss_gib": max((r.get("peak_rss_gib", 0) for r in results), default=None),
            "losses": [round(s["loss"], 4) for s in first.get("steps", [])[:20]],
            "errors": [r["error"] for r in results if "error" in r],
        }
    base = summary.get("trainer_padded", {}).get("tokens_per_s")
    print(f"\n{args.rows} alpaca rows (mean {mean_len:.1f} tokens), {args.tokens_per_step} real tokens per step "
          f"(row-batched: {args.rows_per_step} rows), {args.steps} steps, first {args.warmup} untimed")  # fmt: skip
    cpu_base = summary.get("trainer_padded", {}).get("tokens_per_cpu_s")
    print(f"{'stack':<26}{'tok/s':>8}{'x pred.':>9}{'tok/CPU-s':>11}{'x pred.':>9}{'tok/step':>9}{'RSS GiB':>9}")
    for stack, row in summary.items():
        value, cpu = row["tokens_per_s"], row["tokens_per_cpu_s"]
        ratio = f"{value / base:.2f}x" if value and base else "-"
        cpu_ratio = f"{cpu / cpu_base:.2f}x" if cpu and cpu_base else "-"
        errors = "; ".join(row["errors"])
        print(f"{stack:<26}{value or 0:>8.1f}{ratio:>9}{cpu or 0:>11.1f}{cpu_ratio:>9}"
              f"{row['real_tokens_per_step'] or 0:>9.0f}{row['peak_rss_gib'] or 0:>9.2f}  {errors}")  # fmt: skip
    print("\nfirst-step losses:")
    for stack, row in summary.items():
        print(f"  {stack:<18}" + " ".join(f"{loss:.3f}" for loss in row["losses"]))
    if rss:
        print(f"\npeak RSS at {args.rss_tokens} tokens per step (one step, activation checkpointing):")
        for result in rss:
            print(f"  {result['stack']:<18}{result.get('peak_rss_gib', 0):.2f} GiB  {result.get('error', '')}")
        if all("error" not in r for r in rss):
            print(f"  ratio tunellm / flattening peer: {rss[1]['peak_rss_gib'] / rss[0]['peak_rss_gib']:.2f}")
    return summary


def measure_rss(args: argparse.Namespace, rows: Path, mean_len: float) -> list[dict]:
    """One step of the flattening peer and of tunellm packed at `--rss-tokens` tokens, checkpointing on; side by
    side with --rss-parallel (peaks are per process, so only the time is shared)."""
    per_step = max(1, round(args.rss_tokens / mean_len))
    big = {"steps": 1, "rows_per_step": per_step, "tokens_per_step": args.rss_tokens, "checkpointing": 1}
    stacks = ("trainer_flatten", "tunellm_packed")
    with concurrent.futures.ThreadPoolExecutor(2 if args.rss_parallel else 1) as pool:
        results = list(pool.map(lambda stack: run_child(stack, args, rows, **big), stacks))
    for result in results:
        print(f"{result['stack']} at {args.rss_tokens} tokens: peak RSS {result.get('peak_rss_gib', 0):.2f} GiB "
              f"{result.get('error', '')}", flush=True)  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=["default", "7b", "tiny"], default="default")
    parser.add_argument("--model-dir", default=None, help="7b/tiny: the random model's folder (built when absent)")
    parser.add_argument("--data", type=Path, default=ALPACA)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--tokens-per-step", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stacks", default=",".join(MAIN_STACKS), help="comma-separated, in order; none: only RSS")
    parser.add_argument("--rss-tokens", type=int, default=8192)
    parser.add_argument("--rss-parallel", action="store_true", help="run the two RSS steps side by side")
    parser.add_argument("--rss-limit-gib", type=float, default=12.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="throughput-"))
    if args.shape != "default":
        from methods_memory_row import build_model, has_model

        args.model_dir = args.model_dir or str(folder / f"llama-{args.shape}")
        if not has_model(Path(args.model_dir)):
            build_model(args.shape, Path(args.model_dir))
    rows, mean_len = prepare_rows(args.data, args.rows, args.cutoff, folder)
    args.rows_per_step = max(1, round(args.tokens_per_step / mean_len))
    args.stacks = [] if args.stacks == "none" else args.stacks.split(",")
    rounds = []
    for index in range(args.rounds if args.stacks else 0):
        order = args.stacks if index % 2 == 0 else args.stacks[::-1]
        rounds.append([])
        for stack in order:
            result = run_child(stack, args, rows)
            losses = " ".join(f"{step['loss']:.3f}" for step in result.get("steps", []))
            print(f"round {index + 1} {stack}: {speed(result, args.warmup) or 0:.1f} real tok/s, "
                  f"{speed(result, args.warmup, 'cpu_seconds') or 0:.1f} per CPU-s, peak RSS "
                  f"{result.get('peak_rss_gib', 0):.2f} GiB, losses {losses} {result.get('error', '')}",
                  flush=True)  # fmt: skip
            rounds[-1].append(result)
    rss = measure_rss(args, rows, mean_len) if args.rss_tokens else []
    summary = report(rounds, rss, args, mean_len)
    if args.json:
        record = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": platform.platform(), "cpus": os.cpu_count(), "args": {k: str(v) for k, v in vars(args).items()},
            "stacks": STACKS, "summary": summary, "rounds": rounds, "rss": rss,
        }  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
