"""``GET /metrics``: the server's and its engine's state in Prometheus' text format, read when scraped.

Nothing is counted twice: the collector reads the engine's own histograms and counters (``stream/metrics.py``) and
the server's counters at scrape time. Histograms keep every second bucket edge of a decade (1, 3.16, 10, ... in
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

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from legato.stream.engine import Engine
from legato.stream.metrics import Histogram

if TYPE_CHECKING:
    from legato.server.ws_server import TranscriptionServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EDGE_STEP = 10  # every 10th of the latency histograms' 20 edges a decade


def _histogram(family: HistogramMetricFamily, labels: list[str], h: Histogram, step: int) -> None:
    with h._lock:
        counts, total = list(h.counts), h.total
    buckets, seen = [], 0
    for i, edge in enumerate(h.edges):
        seen += counts[i]
        if i % step == step - 1 or i == len(h.edges) - 1:
            buckets.append((f"{edge:.6g}", seen))
    buckets.append(("+Inf", seen + counts[-1]))
    family.add_metric(labels, buckets, total)


class ServerCollector:
    def __init__(self, server: "TranscriptionServer"):
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server, engine = self.server, self.server.engine
        counters = server.counters
        refused = CounterMetricFamily("legato_refused", "Connections and API requests refused, by reason", labels=["reason"])
        for reason, n in sorted(counters.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        errors = CounterMetricFamily("legato_errors", "Streams and requests ended by an error, by code", labels=["code"])
        merged = dict(counters.errors)
        for code, n in getattr(engine, "errors", {}).items():
            merged[code] = merged.get(code, 0) + n
        for code, n in sorted(merged.items()):
            errors.add_metric([code], n)
        yield errors
        yield CounterMetricFamily("legato_messages", "WebSocket messages received", value=counters.messages)
        yield from self._engine(engine)
        yield from _gpu_memory()

    def _engine(self, engine) -> Iterator[Metric]:
        if not isinstance(engine, Engine):  # the bulk path keeps its own statistics (--stats-every)
            return
        streams, queued = engine.load()
        open_streams = GaugeMetricFamily("legato_open_streams", "Streams open now", labels=["route"])
        for route, n in streams.items():
            open_streams.add_metric([route], n)
        yield open_streams
        depth = GaugeMetricFamily("legato_stage_queue_frames", "Frames waiting at a stage now", labels=["stage"])
        for stage, n in queued.items():
            depth.add_metric([stage], n)
        yield depth
        frames_in = CounterMetricFamily("legato_stage_frames_in", "Frames stages took", labels=["stage"])
        frames_out = CounterMetricFamily("legato_stage_frames_out", "Frames stages gave", labels=["stage"])
        failures = CounterMetricFamily("legato_stage_failures", "Steps that failed for a stream", labels=["stage"])
        step = HistogramMetricFamily("legato_stage_step_seconds", "Compute time of one batched step", labels=["stage"])
        batch = HistogramMetricFamily("legato_stage_batch_size", "Streams in one step", labels=["stage"])
        wait = HistogramMetricFamily("legato_stage_queue_wait_seconds", "How long frames waited for their step", labels=["stage"])
        for name, m in zip(engine.stage_names, engine.stage_metrics):
            frames_in.add_metric([name], m.frames_in)
            frames_out.add_metric([name], m.frames_out)
            failures.add_metric([name], m.failures)
            _histogram(step, [name], m.compute_s, EDGE_STEP)
            _histogram(wait, [name], m.queue_wait_s, EDGE_STEP)
            _histogram(batch, [name], m.batch_size, max(1, len(m.batch_size.edges) // 8))
        yield from (frames_in, frames_out, failures, step, batch, wait)
        latency = HistogramMetricFamily("legato_latency_seconds", "A frame's way from push to output", labels=["route"])
        for route, h in engine.route_latency_s.items():
            _histogram(latency, [route], h, EDGE_STEP)
        yield latency


def _gpu_memory() -> Iterator[Metric]:
    import torch

    if not torch.cuda.is_initialized():  # never initialise CUDA for a scrape
        return
    memory = GaugeMetricFamily("legato_gpu_memory_bytes", "Memory PyTorch holds on each GPU", labels=["device"])
    for i in range(torch.cuda.device_count()):
        memory.add_metric([f"cuda:{i}"], torch.cuda.memory_allocated(i))
    yield memory


def exposition(server: "TranscriptionServer") -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return generate_latest(registry)
