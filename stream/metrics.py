"""Metrics: fixed-bucket histograms per stage, readable at any time.

Histograms never grow: a latency histogram has log-spaced buckets from 1 us
to 100 s (20 per decade, so a quantile is within about 12 % of the truth), a
batch-size histogram one bucket per size. Reading them is a cheap snapshot.
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field

import numpy as np

MIN_LATENCY_S = 1e-6
MAX_LATENCY_S = 100.0
BUCKETS_PER_DECADE = 20


def _log_edges(lo: float, hi: float, per_decade: int) -> list[float]:
    decades = math.log10(hi / lo)
    n = int(round(decades * per_decade))
    return [lo * 10 ** (i / per_decade) for i in range(n + 1)]


class Histogram:
    """Counts of values in buckets with upper edges ``edges`` (plus an overflow bucket)."""

    def __init__(self, edges: list[float]):
        self.edges = list(edges)
        self.counts = [0] * (len(self.edges) + 1)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._lock = threading.Lock()
        self._np_edges: np.ndarray | None = None

    @classmethod
    def latency(cls) -> "Histogram":
        return cls(_log_edges(MIN_LATENCY_S, MAX_LATENCY_S, BUCKETS_PER_DECADE))

    @classmethod
    def sizes(cls, largest: int) -> "Histogram":
        return cls([float(i) for i in range(1, largest + 1)])

    def record(self, value: float) -> None:
        self.record_many((value,))

    def record_many(self, values) -> None:
        """Record every value under one lock acquisition (a step records one value per stream in its batch)."""
        if isinstance(values, np.ndarray):
            self._record_array(values)
            return
        edges, counts = self.edges, self.counts
        with self._lock:
            for value in values:
                counts[bisect.bisect_left(edges, value)] += 1
                self.count += 1
                self.total += value
                if value < self.min:
                    self.min = value
                if value > self.max:
                    self.max = value

    def _record_array(self, values: np.ndarray) -> None:
        """``record_many`` in array operations: a bulk step records tens of thousands of values (a Python loop
        over 16,384 values costs ~5 ms of the stepping thread)."""
        values = np.asarray(values, np.float64).reshape(-1)
        if not len(values):
            return
        if self._np_edges is None:
            self._np_edges = np.asarray(self.edges)
        binned = np.bincount(np.searchsorted(self._np_edges, values, side="left"), minlength=len(self.counts))
        with self._lock:
            for i in np.flatnonzero(binned):
                self.counts[i] += int(binned[i])
            self.count += len(values)
            self.total += float(values.sum())
            self.min = min(self.min, float(values.min()))
            self.max = max(self.max, float(values.max()))

    def quantile(self, q: float) -> float:
        """Upper edge of the bucket holding the q-quantile, clipped to the observed range."""
        with self._lock:
            if not self.count:
                return math.nan
            rank = q * self.count
            seen = 0
            for i, c in enumerate(self.counts):
                seen += c
                if seen >= rank and c:
                    edge = self.edges[i] if i < len(self.edges) else self.max
                    return min(max(edge, self.min), self.max)
            return self.max

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0}
        return {
            "count": self.count,
            "mean": self.total / self.count,
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "min": self.min,
            "max": self.max,
        }


@dataclass
class StageMetrics:
    """What one stage did: how long frames waited, how long steps took, how big batches were."""

    max_batch: int
    queue_wait_s: Histogram = field(default_factory=Histogram.latency)
    compute_s: Histogram = field(default_factory=Histogram.latency)
    batch_size: Histogram = field(init=False)
    frames_in: int = 0
    frames_out: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self.batch_size = Histogram.sizes(self.max_batch)

    def summary(self) -> dict:
        return {
            "queue_wait_s": self.queue_wait_s.summary(),
            "compute_s": self.compute_s.summary(),
            "batch_size": self.batch_size.summary(),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "failures": self.failures,
        }


def format_metrics(snapshot: dict) -> str:
    """A readable table of an engine metrics snapshot (milliseconds for latencies)."""
    lines = [f"{'stage':<20} {'what':<13} {'count':>7} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}"]

    def row(stage: str, what: str, h: dict, scale: float, unit: str) -> None:
        if not h.get("count"):
            return
        vals = " ".join(f"{h[k] * scale:>8.2f}{unit}" for k in ("p50", "p90", "p99", "max"))
        lines.append(f"{stage:<20} {what:<13} {h['count']:>7} {vals}")

    for name, s in snapshot.get("stages", {}).items():
        row(name, "queue wait", s["queue_wait_s"], 1e3, "m")
        row(name, "compute", s["compute_s"], 1e3, "m")
        row(name, "batch size", s["batch_size"], 1.0, " ")
    row("engine", "end-to-end", snapshot.get("end_to_end_s", {}), 1e3, "m")
    return "\n".join(lines)


@dataclass
class HistogramCounts:
    """A histogram's cumulative state as plain values (picklable: it crosses a front end's pipe)."""

    edges: list[float]
    counts: list[int]  # per bucket, the last one past the top edge
    total: float

    @classmethod
    def of(cls, h: Histogram) -> "HistogramCounts":
        with h._lock:
            return cls(list(h.edges), list(h.counts), h.total)

    def add(self, other: "HistogramCounts") -> "HistogramCounts":
        if other.edges != self.edges:
            raise ValueError("histograms with different buckets do not add")
        return HistogramCounts(self.edges, [a + b for a, b in zip(self.counts, other.counts)], self.total + other.total)


def _add_counts(a: dict, b: dict) -> dict:
    """Two label -> count (or HistogramCounts) maps added."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, HistogramCounts):
            out[key] = out[key].add(value)
        else:
            out[key] += value
    return out


@dataclass
class MetricsSnapshot:
    """What ``/metrics`` reports (server/prometheus.py), from any stream service (``StreamService.ametrics``): counts
    since start by label (route, stage, error code, refusal reason) and histograms. Snapshots of several processes
    add up (``merge``)."""

    open_streams: dict[str, int] = field(default_factory=dict)  # by route
    queued_frames: dict[str, int] = field(default_factory=dict)  # by stage
    frames_in: dict[str, int] = field(default_factory=dict)  # by stage
    frames_out: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    step_s: dict[str, HistogramCounts] = field(default_factory=dict)  # by stage
    batch_size: dict[str, HistogramCounts] = field(default_factory=dict)
    queue_wait_s: dict[str, HistogramCounts] = field(default_factory=dict)
    latency_s: dict[str, HistogramCounts] = field(default_factory=dict)  # by route, push to output
    errors: dict[str, int] = field(default_factory=dict)  # by code
    refused: dict[str, int] = field(default_factory=dict)  # by reason
    messages: int = 0  # WebSocket messages received
    servers_included: bool = False  # the servers' counters (refused, errors, messages) are in already

    def merge(self, other: "MetricsSnapshot") -> "MetricsSnapshot":
        fields = ("open_streams", "queued_frames", "frames_in", "frames_out", "failures", "step_s", "batch_size",
                  "queue_wait_s", "latency_s", "errors", "refused")
        merged = MetricsSnapshot(**{f: _add_counts(getattr(self, f), getattr(other, f)) for f in fields})
        merged.messages = self.messages + other.messages
        merged.servers_included = self.servers_included or other.servers_included
        return merged
