"""The hang watchdog of a multi-process run: a process that waits longer than `train.ddp_timeout` writes every
Python thread's stack to `output_dir/hang-rank{N}.txt`, names the stuck or missing processes, and exits.

The main thread marks its progress (`Strategy.progress`) before each collective and micro-batch; a daemon thread
publishes (count of marks, where, time) to the launcher's key-value store every second and watches the local
count. When it has not moved for `ddp_timeout` seconds, the thread reads every process's entry: processes whose
entry stopped being refreshed are missing (dead or frozen), and of the others those with the fewest marks are
stuck (the rest wait for them in a collective). When the launcher stops this process because another one died
(SIGTERM), the stacks are written the same way: Python's C-level handler writes the signal to a wakeup pipe that
the thread watches, so it is handled even while the main thread sits in a C++ collective and never returns to
Python (whichever thread the kernel delivers it to). The process group's own timeout is twice ddp_timeout, so
the watchdog speaks first.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
EXIT_HANG = 3
EXIT_STOPPED = 143  # as a SIGTERM would
PREFIX = "tunellm-watchdog/"


class Watchdog:
    def __init__(self, strategy: Any, output_dir: Path, timeout: float) -> None:
        import torch.distributed as dist
        from torch.distributed.distributed_c10d import _get_default_store

        self.rank, self.world, self.output_dir, self.timeout = strategy.rank, strategy.world, output_dir, timeout
        self.store = dist.PrefixStore(PREFIX, _get_default_store())
        self.interval = min(1.0, timeout / 10)
        self.count, self.where, self.moved = 0, "start", time.monotonic()
        self.stopped = threading.Event()
        strategy.progress = self.mark

    def mark(self, where: str) -> None:
        """The main thread's progress: called before each collective and micro-batch."""
        self.count, self.where, self.moved = self.count + 1, where, time.monotonic()

    def _publish(self) -> None:
        entry = {"count": self.count, "where": self.where, "time": time.time()}
        self.store.set(str(self.rank), json.dumps(entry))

    def _entries(self) -> dict[int, dict[str, Any] | None]:
        found: dict[int, dict[str, Any] | None] = {}
        for rank in range(self.world):
            key = str(rank)
            found[rank] = json.loads(self.store.get(key)) if self.store.check([key]) else None
        return found

    def diagnosis(self) -> str:
        """Which processes are missing and which stuck, from their published progress."""
        try:
            entries = self._entries()
        except Exception as error:  # the store went with the launcher: say so rather than nothing
            return f"the other processes cannot be asked ({error})"
        return diagnose(entries, time.time(), stale_after=max(5 * self.interval, 3.0))

    def report(self, reason: str) -> None:
        """Write this process's stacks and the diagnosis to hang-rank{N}.txt, and say it on stderr."""
        message = f"rank {self.rank}: {reason}; {self.diagnosis()}"
        path = self.output_dir / f"hang-rank{self.rank}.txt"
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as file:
                file.write(message + "\n\n")
                file.flush()
                faulthandler.dump_traceback(file, all_threads=True)
        print(f"error: {message}; stacks in {path}", file=sys.stderr, flush=True)

    def _run(self, wakeup: int) -> None:
        while not self.stopped.is_set():
            ready, _, _ = select.select([wakeup], [], [], self.interval)
            if self.stopped.is_set():
                return
            if ready and signal.SIGTERM in os.read(wakeup, 64):
                self.report("stopped by the launcher (another process failed)")
                os._exit(EXIT_STOPPED)
            with contextlib.suppress(Exception):  # a store that went away must not kill a healthy run
                self._publish()
            idle = time.monotonic() - self.moved
            if idle > self.timeout:
                self.report(f"no progress for {idle:.0f} s (train.ddp_timeout={self.timeout:g}) at {self.where}")
                os._exit(EXIT_HANG)


def diagnose(entries: dict[int, dict[str, Any] | None], now: float, stale_after: float) -> str:
    """'missing: rank 1; stuck: rank 2 (at ...)' from each rank's last published progress (None: never seen)."""
    missing = [r for r, e in entries.items() if e is None or now - e["time"] > stale_after]
    alive = {r: e for r, e in entries.items() if r not in missing and e is not None}
    parts = []
    if missing:
        parts.append("missing (dead or frozen): " + ", ".join(f"rank {r}" for r in missing))
    if alive:
        low = min(e["count"] for e in alive.values())
        behind = [r for r, e in alive.items() if e["count"] == low]
        if len(behind) < len(alive):
            parts.append("stuck: " + ", ".join(f"rank {r} (at {alive[r]['where']})" for r in behind))
        elif not missing:
            parts.append(f"all processes wait at {alive[behind[0]]['where']}, a collective none of them completes")
    return "; ".join(parts) or "no process could be singled out"


@contextlib.contextmanager
def watch(strategy: Any, output_dir: Path, timeout: float) -> Iterator[Watchdog | None]:
    """Run the watchdog around a multi-process run (one process has nobody to wait for)."""
    if strategy.world == 1:
        yield None
        return
    for old in output_dir.glob("hang-rank*.txt") if strategy.is_main and output_dir.is_dir() else []:
        old.unlink()  # an earlier run's report would be taken for this one's
    dog = Watchdog(strategy, output_dir, timeout)
    dog._publish()
    wakeup, written = os.pipe()
    os.set_blocking(written, False)
    previous_fd = signal.set_wakeup_fd(written)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # the watchdog thread reports and exits
    thread = threading.Thread(target=dog._run, args=(wakeup,), name="tunellm-watchdog", daemon=True)
    thread.start()
    try:
        yield dog
    finally:
        dog.stopped.set()
        thread.join(timeout=2 * dog.interval + 1)
        signal.signal(signal.SIGTERM, previous)
        signal.set_wakeup_fd(previous_fd)
        os.close(wakeup)
        os.close(written)
        strategy.progress = lambda where: None
