"""CLI commands run from the page as detached subprocesses: they outlive the browser (and the page's server).

Each job has a folder: `ui_job.json` (the command, its pid, when it started), `ui_job.log` (its output)
and, once it ends by itself, `ui_job.rc` (its exit status). A reopened page reads these to show the
job again. Stopping sends SIGTERM to the job's process group, then SIGKILL if it lingers: a training
run keeps its last checkpoint and the same command resumes from it. Not SIGINT: a page started from a script's
background job (`tunellm ui &`) passes on an ignored SIGINT, and the run would not stop.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunellm.atomic import write_json_atomic

JOB_FILE = "ui_job.json"
LOG_FILE = "ui_job.log"
RC_FILE = "ui_job.rc"
_children: dict[int, subprocess.Popen[bytes]] = {}  # started by this process: reaped here, never zombies


def tunellm_command(*args: str) -> list[str]:
    """`tunellm ARGS` run by this Python, so the page and the command use the same installation."""
    return [sys.executable, "-m", "tunellm", *args]


@dataclass(frozen=True)
class JobState:
    state: str  # "running", "finished", "failed", "stopped" or "none"
    command: list[str]
    started: float
    rc: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


def start(folder: Path, command: list[str], env: dict[str, str] | None = None) -> JobState:
    """Start `command` in its own session (closing the page or the server does not stop it)."""
    folder.mkdir(parents=True, exist_ok=True)
    if read(folder).running:
        raise RuntimeError(f"a job is already running in {folder}")
    (folder / RC_FILE).unlink(missing_ok=True)
    quoted = shlex.join(command)
    script = f'{quoted}; echo $? > "$0"'  # the exit status, written when the command ends by itself
    log = open(folder / LOG_FILE, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        log.write(f"$ {quoted}\n".encode())
        log.flush()
        process = subprocess.Popen(
            ["/bin/sh", "-c", script, str(folder / RC_FILE)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
    finally:
        log.close()
    _children[process.pid] = process
    started = time.time()
    write_json_atomic(folder / JOB_FILE, {"command": command, "pid": process.pid, "started": started})
    return JobState("running", command, started)


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie (ended, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def read(folder: Path) -> JobState:
    path = folder / JOB_FILE
    if not path.is_file():
        return JobState("none", [], 0.0)
    job = json.loads(path.read_text(encoding="utf-8"))
    if _alive(int(job["pid"])):
        return JobState("running", job["command"], job["started"])
    rc_path = folder / RC_FILE
    rc_text = rc_path.read_text().strip() if rc_path.is_file() else ""
    if not rc_text:
        return JobState("stopped", job["command"], job["started"])
    rc = int(rc_text)
    return JobState("finished" if rc == 0 else "failed", job["command"], job["started"], rc)


def stop(folder: Path, grace: float = 20.0) -> JobState:
    """SIGTERM to the job's process group, SIGKILL after `grace` seconds; the rc file is removed (stopped)."""
    path = folder / JOB_FILE
    if not path.is_file() or not read(folder).running:
        return read(folder)
    pid = int(json.loads(path.read_text(encoding="utf-8"))["pid"])
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + wait
        while time.time() < deadline and _alive(pid):
            time.sleep(0.2)
        if not _alive(pid):
            break
    (folder / RC_FILE).unlink(missing_ok=True)
    return read(folder)


def log_tail(folder: Path, lines: int = 40) -> str:
    path = folder / LOG_FILE
    if not path.is_file():
        return ""
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - 20_000))
        text = file.read().decode("utf-8", errors="replace")
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])
