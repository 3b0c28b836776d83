"""Decode steps of an autoregressive model replayed from CUDA graphs, one graph per batch-size bucket.

A decode step (one new token per request) launches hundreds of small kernels; at small batches launching them
costs more than running them. Each bucket (1, 2, 4, ... up to the cache's slots) is captured once, on first
use, over static input tensors; a step with n requests pads to the next bucket (padded rows decode a dummy
token into the cache's scratch slot) and replays it. Shapes do not depend on sequence lengths: the attention
kernel reads each row's length from its position, so one graph serves every step. All buckets share one
memory pool; the returned logits are valid until the next replay.
"""

from __future__ import annotations

import torch

from legato.stream.cuda_graphs import capture
from legato.stream.kv_cache import KvCache
from legato.stream.packed_batch import PackedBatch


def buckets_for(slots: int) -> list[int]:
    sizes, b = [], 1
    while b < slots:
        sizes.append(b)
        b *= 2
    return sizes + [slots]


class DecodeGraphs:
    def __init__(self, model, cache: KvCache):
        self.model, self.cache = model, cache
        self.buckets = buckets_for(cache.slots)
        top = self.buckets[-1]
        dev = cache.k[0].device
        self.tokens = torch.zeros(top, dtype=torch.long, device=dev)
        self.positions = torch.zeros(top, dtype=torch.long, device=dev)
        self.slots = torch.full((top,), cache.scratch, dtype=torch.long, device=dev)
        self.host = torch.zeros(3, top, dtype=torch.long).pin_memory()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, PackedBatch]] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.copied = torch.cuda.Event()  # the pinned host buffer is free again once the last copy from it is done

    def prepare(self) -> None:
        """Capture every bucket now (a server's start-up) rather than at each bucket's first step."""
        for b in self.buckets:
            if b not in self.graphs:
                self.graphs[b] = self._capture(b)

    def fits(self, n: int) -> bool:
        return 0 < n <= self.buckets[-1]

    def _capture(self, b: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, PackedBatch]:
        batch = PackedBatch.decode(self.tokens[:b], self.positions[:b], self.slots[:b])
        self.tokens.zero_()
        self.positions.zero_()
        self.slots.fill_(self.cache.scratch)  # warm-up steps must not touch a live slot
        graph, logits = capture(lambda: self.model.step(batch, self.cache), pool=self.pool)
        return graph, logits, batch  # the graph reads the batch's tensors: they must live as long as it

    def run(self, tokens: list[int], positions: list[int], slots: list[int]) -> torch.Tensor:
        """Logits (n, V) of one decode step: token ``tokens[r]`` at ``positions[r]`` of slot ``slots[r]``."""
        n = len(tokens)
        b = next(s for s in self.buckets if s >= n)
        if b not in self.graphs:
            self.graphs[b] = self._capture(b)
        graph, logits, _ = self.graphs[b]
        self.copied.synchronize()
        host = self.host[:, :b]
        host[0, :n], host[1, :n], host[2, :n] = torch.tensor(tokens), torch.tensor(positions), torch.tensor(slots)
        host[:, n:] = 0
        host[2, n:] = self.cache.scratch
        self.tokens[:b].copy_(host[0], non_blocking=True)
        self.positions[:b].copy_(host[1], non_blocking=True)
        self.slots[:b].copy_(host[2], non_blocking=True)
        self.copied.record()
        graph.replay()
        return logits[:n]
