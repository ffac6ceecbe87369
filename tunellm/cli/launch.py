"""`tunellm train --nproc N [--nnodes M --node-rank R --master-addr A --master-port P]`: the same command, started
N times per node through torch's own launcher (torch.distributed.run, what `torchrun` runs).

The children run this very command minus the launcher flags; they find their rank in the environment the
launcher sets, as under `torchrun` or `accelerate launch`. On failure the launcher's report is boiled down to one
line naming the failed ranks and the hang reports they left.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tunellm.errors import TrainingError

LAUNCH_FLAGS = {"--nproc": 1, "--nnodes": 1, "--node-rank": 1, "--master-addr": 1, "--master-port": 1}


def under_launcher() -> bool:
    """Whether this process was started by torchrun, accelerate launch or the DeepSpeed launcher."""
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def child_argv(argv: list[str]) -> list[str]:
    """`argv` (the command's arguments after the program) without the launcher's flags."""
    kept, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = 0 if "=" in arg else LAUNCH_FLAGS[name]
            continue
        kept.append(arg)
    return kept


def entry_point() -> list[str]:
    """How this process was started, so the children start the same way (`-m module`, or the script)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return ["-m", spec.name.removesuffix(".__main__")]
    return [sys.argv[0]]


def launcher_args(
    nproc: int, nnodes: int, node_rank: int, master_addr: str, master_port: int | None, argv: list[str]
) -> list[str]:
    """torch.distributed.run's arguments: one node standalone (a free port of its own), else a static rendezvous."""
    args = [f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.2"]
    if nnodes == 1 and master_port is None:
        args.append("--standalone")
    else:
        args += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}"]
        args.append(f"--master-port={master_port or 29500}")
    return args + entry_point() + child_argv(argv)


def launch(nproc: int, nnodes: int, node_rank: int, master_addr: str, master_port: int | None, output: Path) -> None:
    """Start the processes and wait for them; raise TrainingError naming the ranks that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(launcher_args(nproc, nnodes, node_rank, master_addr, master_port, sys.argv[1:]))
    try:
        run(args)
    except ChildFailedError as error:
        failed = ", ".join(f"rank {rank} (exit code {f.exitcode})" for rank, f in sorted(error.failures.items()))
        reports = sorted(str(p) for p in output.glob("hang-rank*.txt")) if output.is_dir() else []
        raise TrainingError(
            f"training processes failed: {failed}",
            file=str(output),
            hint=("stacks and the stuck ranks: " + ", ".join(reports) if reports else "see the messages above")
            + "; run the same command again to resume from the last checkpoint",
        ) from None
