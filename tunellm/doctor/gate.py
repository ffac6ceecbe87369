"""The checks `tunellm train` runs before any weights load, and its refusal of a run that will certainly fail.

Only two findings refuse: an estimated peak beyond what the device holds even if the estimate is 25% high (its
measured error), and an end-of-turn the model can never generate or generation never stops on. `--force` trains
anyway. Both checks reuse the tokenizer and template `tunellm train` has loaded and the rows it has tokenized,
so they add a few milliseconds plus the hardware probe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunellm.config.schema import RunConfig
from tunellm.doctor.base import Context, Result
from tunellm.doctor.checks.memory import check_memory
from tunellm.doctor.checks.template import check_eos
from tunellm.errors import ConfigError


def longest_and_rows(dataset: Any) -> tuple[int, int]:
    """(tokens of the longest sample, samples) of a tokenized set or a Subset of one."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:  # torch Subset (dev_split)
        lengths = dataset.dataset.lengths[list(dataset.indices)]
    return (int(lengths.max()) if len(lengths) else 0), len(lengths)


def preflight(
    config: RunConfig,
    tokenizer: Any,
    template: Any,
    dataset: Any,
    *,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> list[Result]:
    """Run the fast checks; raise ConfigError on a sure failure unless `force`. Warnings are said."""
    longest, rows = longest_and_rows(dataset)
    context = Context(config, tokenizer=tokenizer, template=template, longest_row=longest or None, rows=rows)
    results = [check_eos(context), *check_memory(context)]
    peak, time = results[1], results[2]
    say(f"doctor: {peak.message}; {time.message.removeprefix('about ')}")
    for result in results:
        if result.status != "pass":
            say(f"doctor: {result.status}: {result.name}: {result.message}")
            for line in result.details:
                say(f"  {line}")
    sure = [result for result in results if result.sure]
    if sure and not force:
        raise ConfigError(
            "refusing to train: " + "; ".join(result.message for result in sure),
            hint="fix the config (see `tunellm doctor` for settings that fit), or pass --force to train anyway",
        )
    if sure:
        say("doctor: --force given: training anyway")
    return results
