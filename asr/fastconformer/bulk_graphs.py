"""The device part of a bulk step as CUDA graphs, one per (phase, batch bucket).

Eager, a FastConformer-L bulk step launches ~1,000 kernels from Python: ~35 ms of CPU on an H200's host whatever
the batch (launch-bound below a few thousand streams), and every PyTorch call drops and retakes the GIL, so in
a server (pipe readers, writers, a text thread in the same process) each retake can wait behind another thread:
measured, a 1,024-stream step took 224 ms in the server against ~20 ms alone. A replayed graph is one call.

What is captured: pre-emphasis, framing, log-mel (the rows' carried samples and mel frames), the encoder step over
the state pool's rows (the kernels update them in place) and, for CTC, the head, argmax and collapse with the
pooled previous-argmax. Inputs are static buffers: the batch's audio and its pool rows. A step of ``n`` rows
replays the smallest bucket >= n with rows ``n..`` pointed at a scratch pool row no stream owns (the pool has one
more row than streams): those rows compute garbage into the scratch row only; every row's math is independent of
the others (per-row kernels, row-wise norms and matmuls), so the real rows equal an eager step's.

Capture runs on the scratch row alone (warm-up steps and the capture itself), so it never touches a stream.
Graphs share one memory pool; they replay one at a time on the stepping thread and their outputs are read before
the next replay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from legato.asr.fastconformer.bulk_launch import pinned
from legato.stream.cuda_graphs import capture

log = logging.getLogger("legato.bulk")

BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1280, 1536, 2048, 2560, 3072, 3584, 4096,
           5120, 6144, 7168, 8192, 9216, 10240, 11264, 12288, 14336, 16384)
# Graph buckets go up to ``max_rows`` (default MAX_GRAPH_ROWS); a larger step replays them on pieces of its rows
# (``BulkTranscriber._pieces``), not eager: eager launches share the GIL with the threads pushing audio (at 32,000
# streams on an H200, p99 518 ms eager against 196 with graphs to 16,384; with graphs to 16,384, 40,000 streams run
# at p99 34 ms: docs/PERFORMANCE.md). All 52 graphs to 16,384 fit a 12,288-stream server's warm-up (73 GB reserved
# with the pool); the default stays 4,096 (32 graphs), larger buckets are asked for (``graph_rows``).
MAX_GRAPH_ROWS = 4096
# First steps (a stream's first chunk: another width, the state reset) use buckets up to this many rows, larger ones
# replay them on pieces: a server opens streams a few hundred at a time, and first-step graphs hold the most memory
# (a 12,288-stream server's first-step graphs to 16,384 rows reserved ~38 GB at warm-up on an H200, the steady ones
# ~1 GB more)
MAX_FIRST_GRAPH_ROWS = 4096

@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    audio: torch.Tensor  # (B, chunk) float32 input
    rows: torch.Tensor  # (B,) int64 pool rows input
    out: tuple  # CTC: (best, keep) (B, T); otherwise (y, valid)


class BulkGraphs:
    """``run(rows, audio, first)`` = ``device_step`` of ``bulk`` for those rows, by graph replay (steps that
    ``covers``: up to ``buckets[-1]`` rows, first steps up to ``first_buckets[-1]``)."""

    def __init__(self, bulk, scratch: int, max_rows: int = MAX_GRAPH_ROWS):
        """``bulk``: a ``BulkTranscriber`` on CUDA whose per-row state has a row ``scratch`` no stream uses; steps
        of up to ``max_rows`` rows (at most the bucket list's last) replay graphs."""
        self.bulk, self.scratch = bulk, scratch
        top = min(bulk.max_batch, max_rows, BUCKETS[-1])
        self.buckets = sorted({b for b in BUCKETS if b < top} | {top})  # larger steps: eager
        self.first_buckets = [b for b in self.buckets if b <= MAX_FIRST_GRAPH_ROWS] or self.buckets[:1]
        self._graphs: dict[tuple[bool, int], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self._side = torch.cuda.Stream()  # one warm-up stream for every capture

    def covers(self, n: int, first: bool) -> bool:
        """Whether a step of ``n`` rows in that phase replays a graph (else it runs eager)."""
        return n <= (self.first_buckets if first else self.buckets)[-1]

    def bucket(self, n: int, first: bool = False) -> int:
        return next(b for b in (self.first_buckets if first else self.buckets) if b >= n)

    def capture_all(self, phases=(True, False)) -> None:
        for first in phases:
            for b in self.first_buckets if first else self.buckets:
                self._get(first, b)

    def run(self, rows: np.ndarray, audio: torch.Tensor, first: bool) -> tuple:
        """Rows (n,) of the pool, their chunks (n, chunk) (host, page-locked, or device): the step's outputs
        sliced to n rows (views of the graph's static buffers: read them before the next ``run``)."""
        n = len(rows)
        g = self._get(first, self.bucket(n, first))
        g.rows[:n].copy_(pinned(rows), non_blocking=True)  # queued behind a pipelined caller's step in flight
        g.rows[n:].fill_(self.scratch)
        g.audio[:n].copy_(audio, non_blocking=True)
        g.graph.replay()
        return tuple(t[:n] for t in g.out)

    def _get(self, first: bool, b: int) -> _Graph:
        if (first, b) not in self._graphs:
            self._graphs[(first, b)] = self._capture(first, b)
        return self._graphs[(first, b)]

    def _capture(self, first: bool, b: int) -> _Graph:
        bulk = self.bulk
        audio = torch.zeros(b, bulk.chunk, device=bulk.device)
        rows = torch.full((b,), self.scratch, dtype=torch.long, device=bulk.device)
        # warm-up runs and capture on the scratch row; thread_local: the server's other threads may run meanwhile
        graph, out = capture(lambda: bulk.device_step(rows, audio, first), pool=self._pool, error_mode="thread_local",
                             side=self._side)
        # what each capture keeps (a server's warm-up capturing all 52 graphs to 16,384 rows ran out of memory)
        log.debug("graph %s x %d captured: %.1f GB allocated, %.1f GB reserved", "first" if first else "steady", b,
                  torch.cuda.memory_allocated() / 1e9, torch.cuda.memory_reserved() / 1e9)
        return _Graph(graph, audio, rows, out)
