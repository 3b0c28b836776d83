"""Continuous batching of iterative generation jobs (flow-matching ODE solves) across requests.

A job is a little state machine that needs several model steps (an ODE
solve of NFE steps). One worker thread per model owns the GPU work: each
round it takes up to ``max_batch`` active jobs, whatever step each is at,
and advances all of them with one batched ``step_fn`` call (rows carry their
own ODE time, so jobs that arrived at different moments share a forward).
A job that finishes resolves its future; a job whose request was cancelled
is dropped before the next round. The queue of waiting jobs is bounded.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from legato.stream.errors import CapacityError

DEFAULT_MAX_WAITING = 256


@dataclass(eq=False)
class Job:
    """Model-specific ``state``; ``step_fn`` advances it and sets ``done``/``result``."""

    state: Any
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: Any = None
    future: Future = field(default_factory=Future)


class StepBatcher:
    def __init__(self, step_fn: Callable[[list[Job]], None], *, max_batch: int = 16, max_waiting: int = DEFAULT_MAX_WAITING, name: str = "batcher"):
        self.step_fn, self.max_batch, self.max_waiting = step_fn, max_batch, max_waiting
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.rounds = 0  # batched steps run (for tests and metrics)
        self.max_seen_batch = 0
        self._thread = threading.Thread(target=self._run, name=f"legato-{name}", daemon=True)
        self._thread.start()

    def submit(self, state: Any, cancelled: threading.Event | None = None) -> Job:
        job = Job(state, cancelled or threading.Event())
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            if len(self._jobs) >= self.max_waiting:
                raise CapacityError(f"{len(self._jobs)} generation jobs already queued (limit {self.max_waiting})")
            self._jobs.append(job)
            self._cond.notify()
        return job

    def run(self, state: Any, cancelled: threading.Event | None = None) -> Any:
        """Submit and wait for the result (raises the step's exception, or CancelledError)."""
        return self.submit(state, cancelled).future.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)

    def _take(self) -> list[Job]:
        with self._cond:
            while not self._closed and not self._jobs:
                self._cond.wait()
            if self._closed:
                for job in self._jobs:
                    job.future.cancel()
                return []
            live = [j for j in self._jobs if not j.cancelled.is_set()]
            for j in self._jobs:
                if j.cancelled.is_set():
                    j.future.cancel()
            self._jobs = deque(live)
            return live[: self.max_batch]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                if self._closed:
                    return
                continue
            self.rounds += 1
            self.max_seen_batch = max(self.max_seen_batch, len(batch))
            try:
                self.step_fn(batch)
            except BaseException as exc:  # noqa: BLE001 - every job of the failed round gets the error
                for job in batch:
                    job.done, job.result = True, exc
            with self._cond:
                for job in batch:
                    if job.done:
                        self._jobs.remove(job)
                        if isinstance(job.result, BaseException):
                            job.future.set_exception(job.result)
                        else:
                            job.future.set_result(job.result)
