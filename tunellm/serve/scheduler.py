"""Dynamic batching: one worker thread runs batches of the requests that are waiting.

A request joins the queue at once, or is refused when `queue_limit` requests are already waiting or
running (the server answers 429). The worker takes the oldest request's model, waits up to `wait_s` for
more requests to arrive (until `batch_size` are waiting), and runs every waiting request for that model,
up to `batch_size`, as one batch; requests for other models wait for the next batch. A batch never mixes
models, so adapters are switched between batches, never inside one. A request cancelled while queued
leaves the queue; one cancelled while running ends at the next step, and its slot is free again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunellm.infer.batch import Row

log = logging.getLogger(__name__)

RunBatch = Callable[[str, Sequence[Row]], None]  # (model name, rows): generate them, calling each row's emit


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    model: str
    row: Row


class Scheduler:
    def __init__(self, run_batch: RunBatch, *, batch_size: int, queue_limit: int, wait_s: float) -> None:
        self.run_batch = run_batch
        self.batch_size = batch_size
        self.queue_limit = queue_limit
        self.wait_s = wait_s
        self.pending: deque[_Job] = deque()
        self.in_flight = 0  # queued or running, not yet ended
        self.batches = 0
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._work, name="tunellm-batches", daemon=True)
        self.thread.start()

    def submit(self, model: str, row: Row) -> None:
        """Queue `row` for `model`; its emit gets ids, then None once it ends (also when cancelled)."""
        emit, ended = row.emit, threading.Event()

        def counted(item: Any) -> None:
            emit(item)
            if item is None and not ended.is_set():
                ended.set()
                with self.lock:
                    self.in_flight -= 1

        with self.lock:
            if self.in_flight >= self.queue_limit:
                raise QueueFull(f"{self.in_flight} requests are queued or running (the limit is {self.queue_limit})")
            row.emit = counted
            self.in_flight += 1
            self.pending.append(_Job(model, row))
            self.lock.notify_all()

    def cancel(self, row: Row) -> None:
        """End `row` now if it is still queued, else at the next generation step."""
        row.cancelled.set()
        with self.lock:
            queued = [job for job in self.pending if job.row is row]
            for job in queued:
                self.pending.remove(job)
        if queued:
            row.done = True
            row.emit(None)

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {"in_flight": self.in_flight, "queued": len(self.pending), "batches": self.batches}

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        self.thread.join(timeout=5)

    def _next_batch(self) -> tuple[str, list[Row]] | None:
        with self.lock:
            while not self.stopping:
                self.lock.wait_for(lambda: self.pending or self.stopping)
                self.lock.wait_for(lambda: len(self.pending) >= self.batch_size or self.stopping, timeout=self.wait_s)
                if not self.pending or self.stopping:  # the requests were cancelled while it waited
                    continue
                model = self.pending[0].model
                jobs = [job for job in self.pending if job.model == model][: self.batch_size]
                for job in jobs:
                    self.pending.remove(job)
                self.batches += 1
                return model, [job.row for job in jobs]
            return None

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            model, rows = batch
            try:
                self.run_batch(model, rows)
            except Exception:  # the rows got the error; the worker goes on with the next batch
                log.exception("a batch for %s failed", model)
