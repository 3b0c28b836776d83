"""What a bulk worker did between two reads: steps, chunks, busy time, step and chunk-latency histograms.

A server at scale must say where its latency goes without a profiler: is the GPU worker busy all the time (the
model is the limit), are its steps short but chunks wait long (the producers or the GIL are), are pushes refused
(the queue is full). ``BulkTranscriber`` records every step into its current window; a reader (the server's stats
log) swaps in a fresh one and prints the old one's line. Fixed-size histograms: nothing grows between reads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from legato.stream.metrics import Histogram

MS = 1e3


@dataclass
class StepWindow:
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    chunks: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0  # seconds spent inside steps (pipelined: a step's launch to its completion, so they overlap)
    phase_s: dict = field(default_factory=dict)  # the stepping thread's seconds per phase (take, launch, wait, ...)
    step_s: Histogram = field(default_factory=Histogram.latency)
    chunk_latency_s: Histogram = field(default_factory=Histogram.latency)  # chunk arrival -> its tokens on the host

    def record(self, batch: int, seconds: float, latencies: np.ndarray) -> None:
        self.steps += 1
        self.chunks += batch
        self.largest_batch = max(self.largest_batch, batch)
        self.busy_s += seconds
        self.step_s.record(seconds)
        self.chunk_latency_s.record_many(latencies)

    def add_phases(self, phases: dict) -> None:
        for name, seconds in phases.items():
            self.phase_s[name] = self.phase_s.get(name, 0.0) + seconds

    def phases_ms(self) -> dict:
        """Mean milliseconds per step of each phase of the stepping thread."""
        return {name: seconds / max(self.steps, 1) * MS for name, seconds in self.phase_s.items()}

    def line(self, now: float | None = None) -> str:
        """One log line: rates over the window, the worker's busy share, step and chunk-latency quantiles."""
        span = max(1e-9, (now or time.monotonic()) - self.started)
        if not self.steps:
            return f"idle for {span:.1f} s"
        s, c = self.step_s, self.chunk_latency_s
        return (f"{self.chunks / span:,.0f} chunks/s in {self.steps / span:.1f} steps/s (batch mean "
                f"{self.chunks / self.steps:,.0f}, max {self.largest_batch:,}), worker busy {self.busy_s / span:.0%}, "
                f"step p50/max {s.quantile(0.5) * MS:.1f}/{s.max * MS:.1f} ms, chunk latency p50/p99/max "
                f"{c.quantile(0.5) * MS:.0f}/{c.quantile(0.99) * MS:.0f}/{c.max * MS:.0f} ms"
                + ("; per step " + ", ".join(f"{k} {v:.1f}" for k, v in self.phases_ms().items()) + " ms" if self.phase_s else ""))


class StepWindows:
    """The current window, swapped out whole by ``read`` (recording and reading may be on different threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = StepWindow()

    def record(self, batch: int, seconds: float, latencies: np.ndarray) -> None:
        with self._lock:
            self._window.record(batch, seconds, latencies)

    def add_phases(self, phases: dict) -> None:
        """Seconds the stepping thread spent per phase in one ``step`` call."""
        with self._lock:
            self._window.add_phases(phases)

    def read(self) -> StepWindow:
        """The window since the last read; a new one starts now."""
        with self._lock:
            window, self._window = self._window, StepWindow()
        return window
