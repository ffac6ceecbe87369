"""The multi-process pieces that need no second process: config checks, the DeepSpeed config and the strategy's
handling of its engine (faked at its boundary), the launcher's arguments, the watchdog's diagnosis, the data
position carried to another number of processes, and packed micro-batches dealt to processes."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from tunellm.cli.launch import child_argv, launcher_args
from tunellm.config.schema import TrainConfig
from tunellm.train.batching import PackedBatcher
from tunellm.train.state import TrainState, resume_on
from tunellm.train.strategy import deepspeed as ds_strategy
from tunellm.train.strategy.deepspeed import deepspeed_config
from tunellm.train.watchdog import diagnose


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"distributed": "ddp", "zero_stage": 3}, "zero_stage applies to distributed=fsdp or deepspeed"),
        ({"offload": "all"}, "offload applies to distributed=fsdp or deepspeed"),
        ({"distributed": "fsdp", "offload": "optimizer"}, "use offload=all"),
        ({"distributed": "fsdp", "fp16": True}, "use bf16"),
        ({"distributed": "deepspeed", "offload": "all"}, "only with zero_stage=3"),
    ],
)
def test_distributed_options_that_do_not_fit_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_the_deepspeed_config_is_generated_from_the_run_config():
    cfg = TrainConfig(
        distributed="deepspeed", zero_stage=3, offload="all", bf16=True, max_grad_norm=0.5,
        per_device_train_batch_size=2, gradient_accumulation_steps=4,
    )  # fmt: skip
    config = deepspeed_config(cfg, world=8)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu" and zero["stage3_gather_16bit_weights_on_model_save"]
    assert config["bf16"] == {"enabled": True} and not config["fp16"]["enabled"]
    assert config["gradient_clipping"] == 0.5
    assert config["train_batch_size"] == 2 * 4 * 8 and config["gradient_accumulation_steps"] == 4
    plain = deepspeed_config(TrainConfig(distributed="deepspeed"), world=1)["zero_optimization"]
    assert plain["stage"] == 2 and "offload_optimizer" not in plain and "offload_param" not in plain


class FakeEngine:
    """DeepSpeed's engine API as the strategy uses it, recording the calls."""

    def __init__(self, model, applied: bool = True) -> None:
        self.module, self.device, self.calls, self.applied = model, torch.device("cpu"), [], applied

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def set_gradient_accumulation_boundary(self, last: bool) -> None:
        self.calls.append(("boundary", last))

    def backward(self, loss, scale_wrt_gas: bool = True) -> None:
        self.calls.append(("backward", scale_wrt_gas))
        loss.backward()

    def step(self) -> None:
        self.calls.append(("step",))

    def was_step_applied(self) -> bool:
        return self.applied

    def get_global_grad_norm(self) -> float:
        return 1.5


def test_the_deepspeed_strategy_marks_the_boundary_and_leaves_the_schedule_on_a_skipped_step(monkeypatch):
    engines = []

    def initialize(model, optimizer, config):
        engines.append(FakeEngine(model))
        assert config["zero_optimization"]["stage"] == 2
        return engines[-1], optimizer, None, None

    fake = types.SimpleNamespace(init_distributed=lambda dist_backend: None, initialize=initialize)
    monkeypatch.setattr(ds_strategy, "_import_deepspeed", lambda: fake)
    # the one-process strategy sets these for DeepSpeed; set here, they are undone after the test, so no later
    # test's subprocess inherits RANK/WORLD_SIZE (which made the real-process tests fail when run after this one)
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(key, value)
    strategy = ds_strategy.DeepSpeedStrategy(TrainConfig(distributed="deepspeed"))
    model = torch.nn.Linear(3, 1)
    engine, optimizer = strategy.prepare(model, lambda bare: torch.optim.SGD(bare.parameters(), lr=0.1))
    for last in (False, True):
        strategy.backward(engine, model(torch.ones(1, 3)).sum(), last)
    assert engine.calls == [("boundary", False), ("backward", False), ("boundary", True), ("backward", False)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    assert float(strategy.step(engine, optimizer, scheduler)) == 1.5 and scheduler.last_epoch == 1
    engine.applied = False  # an fp16 overflow: DeepSpeed skipped the step, so the schedule waits
    strategy.step(engine, optimizer, scheduler)
    assert scheduler.last_epoch == 1
    assert strategy.clip(engine, optimizer, 1.0) is None  # DeepSpeed clips inside step
    assert strategy.unwrap(engine) is model
    strategy.close()  # the process group of one it made


def test_the_children_run_the_command_without_the_launcher_flags():
    argv = ["train", "run.yaml", "--nproc", "2", "--nnodes=2", "--node-rank", "1", "--master-port", "29400", "r=4"]
    assert child_argv(argv) == ["train", "run.yaml", "r=4"]
    one_node = launcher_args(2, 1, 0, "127.0.0.1", None, ["train", "--nproc", "2"])
    assert "--standalone" in one_node and "--nproc-per-node=2" in one_node and one_node[-1] == "train"
    two_nodes = launcher_args(1, 2, 1, "10.0.0.1", 29400, ["train"])
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29400"} <= set(two_nodes)


def test_the_watchdog_names_stuck_and_missing_ranks():
    now = 100.0
    entry = lambda count, where="reduce", age=0.0: {"count": count, "where": where, "time": now - age}  # noqa: E731
    assert diagnose({0: entry(9), 1: entry(7, "micro-batch 0")}, now, 3) == "stuck: rank 1 (at micro-batch 0)"
    assert diagnose({0: entry(9), 1: entry(9, age=30)}, now, 3) == "missing (dead or frozen): rank 1"
    assert diagnose({0: entry(9), 1: None, 2: entry(5)}, now, 3) == (
        "missing (dead or frozen): rank 1; stuck: rank 2 (at reduce)"
    )
    assert "all processes wait at reduce" in diagnose({0: entry(4), 1: entry(4)}, now, 3)


def test_the_data_position_carries_over_to_another_number_of_processes():
    state = TrainState(batch_in_epoch=3, processes=2)  # 6 micro-batches of the epoch done
    resume_on(state, 1)
    assert (state.batch_in_epoch, state.processes) == (6, 1)
    resume_on(state, 3)
    assert (state.batch_in_epoch, state.processes) == (2, 3)


def test_packed_micro_batches_are_dealt_to_processes_by_tokens_and_cover_the_epoch():
    lengths = np.random.default_rng(0).integers(5, 120, 200)
    world, budget = 3, 256
    share = [PackedBatcher(lengths, budget, budget, seed=1, pad_id=0, rank=r, world=world).epoch(0) for r in range(3)]
    assert len({len(s) for s in share}) == 1  # every process steps as often
    whole = PackedBatcher(lengths, budget, budget, seed=1, pad_id=0).epoch(0)
    dealt = [batch for step in zip(*share, strict=True) for batch in step]
    assert dealt[: len(whole)] == whole  # in turn, in the one-process order: the same data per global step
    for step in list(zip(*share, strict=True))[:-1]:  # each full micro-batch is within one sample of the budget
        tokens = [int(lengths[b].sum()) for b in step]
        assert max(tokens) <= budget and max(tokens) - min(tokens) < lengths.max()
    assert PackedBatcher(lengths, budget, budget, seed=1, pad_id=0, rank=1, world=world).epoch(0) == share[1]
