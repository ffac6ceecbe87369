"""`python -m tests.e2e.hooked_cli train ...` is `tunellm train ...` that can be caught at a chosen moment.

TUNELLM_TEST_STEP_DELAY=S        sleep S seconds after each step, so a SIGKILL from outside lands at a random step
TUNELLM_TEST_HANG_IN_SAVE=N      inside the writing of checkpoint N (files written and fsynced, not yet renamed)
TUNELLM_TEST_MARKER=PATH         touch PATH and wait to be killed
TUNELLM_TEST_PID_DIR=DIR         each process writes its pid to DIR/rank{RANK}.pid (to SIGKILL one rank)
TUNELLM_TEST_TOKENIZED_DIR=DIR   each process that tokenizes (rather than loading the cache) touches DIR/rank{RANK}
TUNELLM_TEST_STALL=RANK:STEP     process RANK stops (sleeps) after step STEP, touching TUNELLM_TEST_MARKER
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def install_hooks() -> None:
    from tunellm.train import checkpoint, log

    pid_dir = os.environ.get("TUNELLM_TEST_PID_DIR")
    if pid_dir and "RANK" in os.environ:
        (Path(pid_dir) / f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    tokenized_dir = os.environ.get("TUNELLM_TEST_TOKENIZED_DIR")
    if tokenized_dir:
        from tunellm.data import cache

        tokenize = cache.tokenize_conversations

        def counted(*args, **kwargs):
            (Path(tokenized_dir) / f"rank{os.environ.get('RANK', '0')}").touch()
            return tokenize(*args, **kwargs)

        cache.tokenize_conversations = counted
    hang_in_save = os.environ.get("TUNELLM_TEST_HANG_IN_SAVE")
    if hang_in_save:
        fsync_tree = checkpoint._fsync_tree

        def hang(folder: Path) -> None:
            fsync_tree(folder)
            if folder.name == f"{checkpoint.TMP_PREFIX}{hang_in_save}":
                Path(os.environ["TUNELLM_TEST_MARKER"]).touch()
                time.sleep(600)

        checkpoint._fsync_tree = hang
    delay = float(os.environ.get("TUNELLM_TEST_STEP_DELAY", "0"))
    stall = os.environ.get("TUNELLM_TEST_STALL")
    if stall:
        rank, stall_step = (int(part) for part in stall.split(":"))
        advance = log.RunLog.advance

        def stall_at(self, step: int, epoch: float) -> None:
            advance(self, step, epoch)
            if step == stall_step and int(os.environ.get("RANK", "0")) == rank:
                Path(os.environ["TUNELLM_TEST_MARKER"]).touch()
                time.sleep(600)

        log.RunLog.advance = stall_at
    if delay:
        advance = log.RunLog.advance

        def slow_advance(self, step: int, epoch: float) -> None:
            advance(self, step, epoch)
            time.sleep(delay)

        log.RunLog.advance = slow_advance


if __name__ == "__main__":
    install_hooks()
    from tunellm.cli.main import main

    main()
