"""`tunellm train [CONFIG.yaml] [--data FILE ...] [--dev FILE ...] [--output DIR] [--model NAME] [key=value ...]`."""

from __future__ import annotations

import logging

import typer

from tunellm.cli.args import CONFIG_AND_OVERRIDES, config_and_overrides, option, shortcuts

DATA = typer.Option(None, "--data", help="training file or glob (repeatable): data.train")
DEV = typer.Option(None, "--dev", help="dev file or glob (repeatable): data.dev")


def show_run_messages() -> None:
    """Our own info lines (resuming from ...) on stderr; transformers' weight-loading bars off."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tunellm")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
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
) -> None:
    """Fine-tune a model. Without a config file: LoRA on the embedded default model with default settings.

    Later wins: CONFIG.yaml, then the flags, then key=value.

    Running the same command again resumes from the newest checkpoint in the output folder. A run that will
    certainly fail (a sure out-of-memory, an end-of-turn never generated) is refused before the weights load;
    `tunellm doctor` says why and what would fit, and --force trains anyway.
    """
    from tunellm.config.load import Override, load_config

    path, overrides = config_and_overrides(args)
    forced = [Override("train.resume_data_changed=restart_epoch", "--force")] if force else []
    config = load_config(path, [*shortcuts(data=data, dev=dev, output=output, model=model), *forced, *overrides])
    show_run_messages()
    from tunellm.train.run import train_from_config

    train_from_config(config, force=force)
