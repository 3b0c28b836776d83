"""Batch release policy: when a stage should step, and on which streams.

Pure functions over numbers, so the policy is unit-testable without threads.

A stage with ``n`` ready streams (each holding one input frame, with a
deadline = the time its audio arrived + the stream's latency budget) runs:

1. now, if ``n >= max_batch`` (the batch is full);
2. now, if every stream open on the stage is ready (nobody else can join);
3. now, if waiting any longer would miss the earliest deadline, given the
   measured step time for a batch of ``n`` and the time the later stages
   need (``slack <= 0``);
4. otherwise not yet: the worker sleeps until the slack runs out or new
   input arrives, whichever comes first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

#: step-time estimates follow new measurements with this weight (exponential average)
STEP_TIME_SMOOTHING = 0.2
#: step time beyond the largest batch measured grows as (size ratio) ** this
EXTRAPOLATION_EXPONENT = 0.5
#: margin kept before a deadline for thread wake-up jitter and routing
DEADLINE_SAFETY_S = 0.002


class StepTimeModel:
    """Measured step time per batch size; interpolates sizes not yet seen."""

    def __init__(self) -> None:
        self._by_size: dict[int, float] = {}
        self._lock = threading.Lock()

    def record(self, batch_size: int, seconds: float) -> None:
        with self._lock:
            old = self._by_size.get(batch_size)
            self._by_size[batch_size] = seconds if old is None else old + STEP_TIME_SMOOTHING * (seconds - old)

    def estimate(self, batch_size: int) -> float:
        with self._lock:
            if not self._by_size:
                return 0.0
            if batch_size in self._by_size:
                return self._by_size[batch_size]
            sizes = sorted(self._by_size)
            below = [s for s in sizes if s < batch_size]
            above = [s for s in sizes if s > batch_size]
            if below and above:
                a, b = below[-1], above[0]
                ta, tb = self._by_size[a], self._by_size[b]
                return ta + (tb - ta) * (batch_size - a) / (b - a)
            if above:  # smaller than anything seen: assume no cheaper than the smallest
                return self._by_size[above[0]]
            # Larger than anything seen: grow as the square root from the largest. Batched steps cost mostly a fixed
            # amount until the device fills, and a linear guess from small batches would keep every batch small
            # (the deadline rule would fire at once on whatever is ready, so bigger batches would never be timed).
            top = below[-1]
            return self._by_size[top] * (batch_size / top) ** EXTRAPOLATION_EXPONENT


@dataclass(frozen=True)
class Release:
    """The decision for one stage: run now, or wait at most ``wait_s``."""

    run: bool
    wait_s: float = 0.0
    reason: str = ""


def decide(
    *,
    ready: int,
    active: int,
    max_batch: int,
    earliest_deadline: float,
    now: float,
    step_s: float,
    downstream_s: float = 0.0,
) -> Release:
    """Whether a stage with ``ready`` of ``active`` streams waiting should step now."""
    if ready <= 0:
        return Release(False, float("inf"), "idle")
    if ready >= max_batch:
        return Release(True, 0.0, "full")
    if ready >= active:
        return Release(True, 0.0, "all_ready")
    slack = earliest_deadline - now - step_s - downstream_s - DEADLINE_SAFETY_S
    if slack <= 0:
        return Release(True, 0.0, "deadline")
    return Release(False, slack, "waiting")
