"""Real multi-process runs on the CPU (gloo) with the tiny llama: `tunellm train --nproc 2`, two torchrun node groups,
FSDP2 with sharded resume onto another number of processes, a SIGKILLed rank, and the hang watchdog.

Two processes with accumulation 1 see the same micro-batches per optimizer step as one process with accumulation 2
(micro-batches are dealt to processes in turn), so they must train to the same adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
HOOKED = [sys.executable, "-m", "tests.e2e.hooked_cli"]
TIMEOUT = 300  # seconds for any one command: nothing here may hang CI
STEPS = 4
OPTIONS = [
    f"max_steps={STEPS}", "save_steps=2", "logging_steps=1", "r=4", "lora_dropout=0", "tokens_per_batch=128",
    "learning_rate=5e-3", "target_modules=[q_proj, v_proj]", "save_total_limit=3", "dev_split=0.25",
]  # fmt: skip
TASK_METRICS = ["eval.task_metrics=true", "eval.max_new_tokens=4"]  # generation on dev rows (not with sharding)
ADAPTER = f"step-{STEPS}/adapter_model.safetensors"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory, cli_env):
    """(model folder, data file, tokenization cache, environment) shared by the module's runs."""
    folder = tmp_path_factory.mktemp("distributed")
    data = folder / "train.jsonl"
    rows = [{"instruction": "Add." + " Show the steps." * (i % 4), "input": f"{i} {2 * i}", "output": f"{3 * i}."}
            for i in range(24)]  # fmt: skip
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {"model": tiny_llama_dir, "data": data, "cache": folder / "cache", "env": cli_env, "root": folder}


def train_args(setup: dict, output: Path, *extra: str) -> list[str]:
    args = ["train", "--data", str(setup["data"]), "--model", str(setup["model"]), "--output", str(output)]
    return [*args, *OPTIONS, f"cache_dir={setup['cache']}", *extra]


def run(command: list[str], env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if ok:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def assert_same_adapter(got: Path, want: Path, atol: float = 2e-6) -> None:
    a, b = adapter(got), adapter(want)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)
    moved = max(float((b[name]).abs().max()) for name in b if "lora_B" in name)
    assert moved > 1e-3  # trained: B starts at zero, so equal adapters are not equal by construction


def evals(output: Path) -> list[dict]:
    lines = (output / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"eval_loss"' in line]


def losses(output: Path) -> list[float]:
    lines = (output / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


@pytest.fixture(scope="module")
def one_process(setup, tunellm_command):
    """The reference: one process, accumulation 2."""
    output = setup["root"] / "one"
    args = train_args(setup, output, "gradient_accumulation_steps=2", "report_to=none", *TASK_METRICS)
    run([*tunellm_command, *args], setup["env"])
    return output


@pytest.fixture(scope="module")
def two_processes(setup):
    """`--nproc 2`, accumulation 1, DDP, with TensorBoard on (rank 0 alone must write it), on a cold cache."""
    output, tokenized = setup["root"] / "two", setup["root"] / "tokenized"
    tokenized.mkdir()
    cold = f"cache_dir={setup['root'] / 'cold'}"
    args = train_args(setup, output, "--nproc", "2", "report_to=tensorboard", cold, *TASK_METRICS)
    done = run([*HOOKED, *args], {**setup["env"], "TUNELLM_TEST_TOKENIZED_DIR": str(tokenized)})
    assert [p.name for p in tokenized.iterdir()] == ["rank0"]  # rank 1 waited for the cache and read it
    return output, done


def test_two_ddp_processes_train_the_adapter_of_one_with_twice_the_accumulation(one_process, two_processes):
    output, done = two_processes
    assert_same_adapter(output / ADAPTER, one_process / ADAPTER)
    # the logged loss is the token-weighted mean over both processes: the one-process run's big-batch loss
    assert losses(output) == pytest.approx(losses(one_process), rel=1e-5)
    assert len(losses(output)) == STEPS  # one log, written once
    # the dev loss and the task metrics (each process generates on every other dev row) equal one process's
    (two,), (one,) = evals(output), evals(one_process)
    assert two.keys() == one.keys() and len(two) > 4  # step, epoch, eval_loss, elapsed and task metrics
    for key in one.keys() - {"elapsed", "epoch"}:  # an odd count of micro-batches is dealt 5 + 5 (one repeated)
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-9), key
    assert len(list((output / "tensorboard").glob("events.*"))) == 1
    assert (output / "loss_curve.png").is_file()
    state = output / f"step-{STEPS}" / "state"
    assert {p.name for p in state.glob("rng_*.json")} == {"rng_0.json", "rng_1.json"}
    assert done.stdout.count("trained 4 steps") == 1  # rank 0 alone reports
    assert done.stdout.count("train data:") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_torchrun_node_groups_train_together_to_the_adapter_of_one_process(setup, one_process):
    output = setup["root"] / "nodes"
    rendezvous = [
        "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=tunellm-test", "--max-restarts=0",
    ]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "-m", "tunellm"]
    command += train_args(setup, output, "report_to=none", *TASK_METRICS)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    nodes = [subprocess.Popen(command, cwd=ROOT, env=setup["env"], **pipes) for _ in range(2)]
    try:
        results = [node.communicate(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, results, strict=True):
        assert node.returncode == 0, err[-4000:]
    assert_same_adapter(output / ADAPTER, one_process / ADAPTER)


def test_accelerate_launch_runs_the_command_unchanged(setup, one_process):
    output = setup["root"] / "accelerate"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tunellm"]
    run([*launcher, *train_args(setup, output, "report_to=none", *TASK_METRICS)], setup["env"])
    assert_same_adapter(output / ADAPTER, one_process / ADAPTER)


def without_final(source: Path, target: Path) -> Path:
    """A copy of a finished run as a run killed after its step-2 checkpoint leaves it."""
    shutil.copytree(source, target)
    shutil.rmtree(target / f"step-{STEPS}")
    (target / "best.json").unlink(missing_ok=True)
    return target


def test_fsdp_trains_like_ddp_and_its_sharded_checkpoints_resume_on_another_number_of_processes(
    setup, tunellm_command, one_process
):
    env, root = setup["env"], setup["root"]
    two, one = root / "fsdp-two", root / "fsdp-one"
    fsdp = ["distributed=fsdp", "report_to=none"]
    run([*tunellm_command, *train_args(setup, two, "--nproc", "2", *fsdp)], env)
    run([*tunellm_command, *train_args(setup, one, "gradient_accumulation_steps=2", *fsdp)], env)
    assert (two / "step-2" / "state" / "sharded" / ".metadata").is_file()
    assert_same_adapter(two / ADAPTER, one_process / ADAPTER, atol=1e-5)
    assert_same_adapter(one / ADAPTER, one_process / ADAPTER, atol=1e-5)

    down = without_final(two, root / "fsdp-2-to-1")  # written by 2 processes, resumed by 1
    done = run([*tunellm_command, *train_args(setup, down, "gradient_accumulation_steps=2", *fsdp)], env)
    assert "resuming from" in done.stderr and "on 1" in done.stderr
    assert_same_adapter(down / ADAPTER, two / ADAPTER, atol=1e-5)

    up = without_final(one, root / "fsdp-1-to-2")  # written by 1 process, resumed by 2
    run([*tunellm_command, *train_args(setup, up, "--nproc", "2", *fsdp)], env)
    assert_same_adapter(up / ADAPTER, one / ADAPTER, atol=1e-5)
    assert set(adapter(up / ADAPTER)) == set(adapter(one_process / ADAPTER))  # a plain single-file peft adapter


def test_sigkill_of_one_rank_then_the_same_command_resumes_to_the_uninterrupted_adapter(setup, two_processes):
    """Killed after its step-2 checkpoint, resumed by the same command: as the uninterrupted `two_processes`."""
    output, pids = setup["root"] / "killed", setup["root"] / "pids"
    pids.mkdir()
    args = train_args(setup, output, "--nproc", "2", "report_to=tensorboard", *TASK_METRICS)
    env = {**setup["env"], "TUNELLM_TEST_STEP_DELAY": "0.5", "TUNELLM_TEST_PID_DIR": str(pids)}
    started = subprocess.Popen([*HOOKED, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT
    while not (output / "step-2").is_dir():
        assert started.poll() is None and time.monotonic() < deadline, started.stderr.read()[-4000:]
        time.sleep(0.05)
    os.kill(int((pids / "rank1.pid").read_text()), signal.SIGKILL)
    _, err = started.communicate(timeout=TIMEOUT)
    assert started.returncode != 0 and b"rank 1 (exit code -9)" in err
    assert not (output / f"step-{STEPS}").exists()
    survivor = (output / "hang-rank0.txt").read_text()  # the launcher stopped rank 0, or its collective failed
    assert "rank 0: " in survivor and "Thread" in survivor
    run(HOOKED + args, setup["env"])  # the same command, no hooks
    assert not list(output.glob("hang-rank*.txt"))  # a new run clears the old reports
    assert_same_adapter(output / ADAPTER, two_processes[0] / ADAPTER, atol=1e-6)
    assert losses(output) == pytest.approx(losses(two_processes[0]), rel=1e-6)


def test_a_stalled_rank_is_named_and_every_rank_leaves_its_stack_within_twice_the_timeout(setup):
    output, marker, timeout = setup["root"] / "stalled", setup["root"] / "stalled.marker", 6
    args = train_args(setup, output, "--nproc", "2", "report_to=none", f"ddp_timeout={timeout}", "max_steps=50")
    env = {**setup["env"], "TUNELLM_TEST_STALL": "1:2", "TUNELLM_TEST_MARKER": str(marker)}
    started = subprocess.Popen([*HOOKED, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert started.poll() is None and time.monotonic() < deadline, started.stderr.read()[-4000:]
        time.sleep(0.02)
    stalled = time.monotonic()
    _, err = started.communicate(timeout=TIMEOUT)
    took = time.monotonic() - stalled
    reports = {p.name: p.read_text() for p in output.glob("hang-rank*.txt")}
    seen = f"after {took:.1f} s: {err.decode()[-3000:]}\n{reports}"
    assert started.returncode != 0, seen
    assert took < 2 * timeout, seen
    assert set(reports) == {"hang-rank0.txt", "hang-rank1.txt"}, seen
    assert "stuck: rank 1" in reports["hang-rank0.txt"], seen
    assert "stall_at" in reports["hang-rank1.txt"], seen  # the stalled rank's own stack shows where it is
    assert b"stuck: rank 1" in err and b"hang-rank0.txt" in err, seen


def test_deepspeed_zero_2_and_3_train_like_one_process_and_resume(setup, tunellm_command, one_process):
    """Where DeepSpeed is installed (it runs on the CPU with gloo): ZeRO-2 on 2 processes, ZeRO-3 on 1 with
    doubled accumulation, each to the reference adapter; ZeRO-2 resumes from its own checkpoint."""
    pytest.importorskip("deepspeed")
    env, root = setup["env"], setup["root"]
    zero2, zero3 = root / "zero2", root / "zero3"
    ds = ["distributed=deepspeed", "report_to=none"]
    run([*tunellm_command, *train_args(setup, zero2, "--nproc", "2", *ds, "zero_stage=2")], env)
    run([*tunellm_command, *train_args(setup, zero3, "gradient_accumulation_steps=2", *ds, "zero_stage=3")], env)
    assert (zero2 / "step-2" / "state" / "latest").is_file()
    assert_same_adapter(zero2 / ADAPTER, one_process / ADAPTER, atol=1e-5)
    assert_same_adapter(zero3 / ADAPTER, one_process / ADAPTER, atol=5e-5)  # ZeRO-3 sums in another order
    again = without_final(zero2, root / "zero2-resumed")
    run([*tunellm_command, *train_args(setup, again, "--nproc", "2", *ds, "zero_stage=2")], env)
    assert_same_adapter(again / ADAPTER, zero2 / ADAPTER, atol=1e-6)
