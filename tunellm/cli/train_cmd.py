"""`tunellm train [CONFIG.yaml] [--data FILE ...] [--dev FILE ...] [--output DIR] [--model NAME] [key=value ...]`
`[--nproc N [--nnodes M --node-rank R --master-addr HOST --master-port PORT]]`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from tunellm.cli import process
from tunellm.cli.args import CONFIG_AND_OVERRIDES, config_and_overrides, option, shortcuts

DATA = typer.Option(None, "--data", help="training file or glob (repeatable): data.train")
DEV = typer.Option(None, "--dev", help="dev file or glob (repeatable): data.dev")


def show_run_messages() -> None:
    """Our own info lines (resuming from ...) on stderr; transformers' weight-loading bars off."""
    rank = int(os.environ.get("RANK", "0"))  # the other processes of a multi-process run: warnings only, labelled
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    logger = logging.getLogger("tunellm")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def train(
    args: list[str] = CONFIG_AND_OVERRIDES,
    data: list[str] = DATA,
    dev: list[str] = DEV,
    output: str = option("output", help="run folder: train.output_dir"),
    model: str = option("model", help="model name or path: model.name_or_path"),
    force: bool = typer.Option(
        False,
        "--force",
        help="train anyway: past pre-flight checks that say it will fail, and on resume with changed data"
        " (train.resume_data_changed=restart_epoch)",
    ),
    nproc: int = typer.Option(1, "--nproc", min=1, help="processes on this node (one per GPU), via torchrun's"),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="machines taking part (start the command on each)"),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="this machine's number, 0 to nnodes-1"),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="address of the machine with node rank 0"),
    master_port: int = typer.Option(None, "--master-port", help="a free port there (default 29500)"),
) -> None:
    """Fine-tune a model. Without a config file: LoRA on the embedded default model with default settings.

    Later wins: CONFIG.yaml, then the flags, then key=value.

    --nproc N starts N processes on this machine (train.distributed picks ddp, fsdp or deepspeed); add --nnodes,
    --node-rank and --master-addr on each machine of a multi-node run. It also runs unchanged under torchrun and
    accelerate launch.

    Running the same command again resumes from the newest checkpoint in the output folder. A run that will
    certainly fail (a sure out-of-memory, an end-of-turn never generated) is refused before the weights load;
    `tunellm doctor` says why and what would fit, and --force trains anyway.
    """
    from tunellm.config.load import Override, load_config

    path, overrides = config_and_overrides(args)
    forced = [Override("train.resume_data_changed=restart_epoch", "--force")] if force else []
    config = load_config(path, [*shortcuts(data=data, dev=dev, output=output, model=model), *forced, *overrides])
    show_run_messages()
    process.for_training(config.method.name)
    from tunellm.cli.launch import launch, under_launcher

    if (nproc > 1 or nnodes > 1) and not under_launcher():
        launch(nproc, nnodes, node_rank, master_addr, master_port, Path(config.train.output_dir))
        return
    from tunellm.train.run import train_from_config

    train_from_config(config, force=force)
