"""``GET /metrics``: the server's and its engine's state in Prometheus' text format, read when scraped.

Nothing is counted twice: a scrape renders one ``MetricsSnapshot`` (``stream/metrics.py``): the stream service's
(``StreamService.ametrics``: the engine's own histograms and counters) plus the servers' counters. With
``--frontends N`` the engine process answers for itself and every front end (their counters reach it each second),
so whichever front end the scrape lands on, it sees the whole server. Histograms keep every second bucket edge of a decade (1, 3.16, 10, ... in
seconds), a subset of the engine's 20 per decade, so their counts are exact.

| metric | labels | |
|---|---|---|
| ``legato_open_streams`` | route | streams open now (WebSocket and HTTP API requests) |
| ``legato_stage_frames_in_total`` / ``_out_total`` | stage | frames stages took and gave (rate(): frames per second) |
| ``legato_stage_queue_frames`` | stage | frames waiting at a stage now |
| ``legato_stage_step_seconds`` | stage | one batched step's compute time |
| ``legato_stage_batch_size`` | stage | streams in one step |
| ``legato_stage_queue_wait_seconds`` | stage | how long frames waited for their step |
| ``legato_latency_seconds`` | route | a frame's way from push to output (end to end) |
| ``legato_stage_failures_total`` | stage | steps that failed for a stream |
| ``legato_errors_total`` | code | streams and requests ended by an error (docs/ERRORS.md codes) |
| ``legato_refused_total`` | reason | connections and API requests refused (capacity, per_client, unauthorized, draining) |
| ``legato_messages_total`` | | WebSocket messages received |
| ``legato_gpu_memory_bytes`` | device | memory PyTorch holds on each GPU (absent without CUDA) |
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from legato.stream.metrics import HistogramCounts, MetricsSnapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EDGE_STEP = 10  # every 10th of the latency histograms' 20 edges a decade


def _histogram(family: HistogramMetricFamily, labels: list[str], h: HistogramCounts, step: int) -> None:
    buckets, seen = [], 0
    for i, edge in enumerate(h.edges):
        seen += h.counts[i]
        if i % step == step - 1 or i == len(h.edges) - 1:
            buckets.append((f"{edge:.6g}", seen))
    buckets.append(("+Inf", seen + h.counts[-1]))
    family.add_metric(labels, buckets, h.total)


def _labelled(family, values: dict) -> Metric:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


class SnapshotCollector:
    def __init__(self, snap: MetricsSnapshot):
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        yield _labelled(CounterMetricFamily("legato_refused", "Connections and API requests refused, by reason", labels=["reason"]), s.refused)
        yield _labelled(CounterMetricFamily("legato_errors", "Streams and requests ended by an error, by code", labels=["code"]), s.errors)
        yield CounterMetricFamily("legato_messages", "WebSocket messages received", value=s.messages)
        yield _labelled(GaugeMetricFamily("legato_open_streams", "Streams open now", labels=["route"]), s.open_streams)
        yield _labelled(GaugeMetricFamily("legato_stage_queue_frames", "Frames waiting at a stage now", labels=["stage"]), s.queued_frames)
        yield _labelled(CounterMetricFamily("legato_stage_frames_in", "Frames stages took", labels=["stage"]), s.frames_in)
        yield _labelled(CounterMetricFamily("legato_stage_frames_out", "Frames stages gave", labels=["stage"]), s.frames_out)
        yield _labelled(CounterMetricFamily("legato_stage_failures", "Steps that failed for a stream", labels=["stage"]), s.failures)
        for name, doc, values, label, step in (
            ("legato_stage_step_seconds", "Compute time of one batched step", s.step_s, "stage", EDGE_STEP),
            ("legato_stage_batch_size", "Streams in one step", s.batch_size, "stage", None),
            ("legato_stage_queue_wait_seconds", "How long frames waited for their step", s.queue_wait_s, "stage", EDGE_STEP),
            ("legato_latency_seconds", "A frame's way from push to output", s.latency_s, "route", EDGE_STEP),
        ):
            family = HistogramMetricFamily(name, doc, labels=[label])
            for key, h in sorted(values.items()):
                _histogram(family, [key], h, step or max(1, len(h.edges) // 8))
            yield family
        yield from _gpu_memory()


def _gpu_memory() -> Iterator[Metric]:
    import torch

    if not torch.cuda.is_initialized():  # never initialise CUDA for a scrape
        return
    memory = GaugeMetricFamily("legato_gpu_memory_bytes", "Memory PyTorch holds on each GPU", labels=["device"])
    for i in range(torch.cuda.device_count()):
        memory.add_metric([f"cuda:{i}"], torch.cuda.memory_allocated(i))
    yield memory


def exposition(snap: MetricsSnapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)
