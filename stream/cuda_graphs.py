"""Capture a streaming step in a CUDA graph.

A step of a fixed-shape state over a fixed-shape chunk launches the same
kernels every time; capturing it once and replaying it removes the per-kernel
launch cost, which dominates small batches (docs/PERFORMANCE.md). The state is
the graph's memory: replays update it in place, exactly as ``step`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from legato.stream.module import StreamingModule
from legato.stream.state import StreamState

WARMUP_STEPS = 2  # lets kernels pick algorithms and allocate workspaces before capture


def capture(fn: Callable[[], Any], *, pool=None, error_mode: str = "global", side: torch.cuda.Stream | None = None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """``fn()`` run ``WARMUP_STEPS`` times on a side stream (kernels compile, libraries pick algorithms and allocate
    workspaces), then captured: the graph and ``fn``'s output, the graph's static buffers. ``pool``: a memory pool
    shared with other graphs; ``error_mode``: ``torch.cuda.graph``'s capture_error_mode ("thread_local" when other
    threads may use CUDA meanwhile); ``side``: the warm-up stream, for callers capturing many graphs (blocks the
    caching allocator keeps, and cuBLAS workspaces, are per stream: a new stream per capture starts each afresh)."""
    side = torch.cuda.Stream() if side is None else side
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode=error_mode):
        out = fn()
    return graph, out


class CapturedStep:
    """``module.step(x, state)`` as a replayable CUDA graph over static buffers.

    ``state`` must live on the GPU and stays the one the graph updates; it is
    left exactly as it was before capture. ``example`` fixes the chunk shape
    and dtype. Calling returns the graph's static output buffer, which the next
    call overwrites: clone it to keep it.
    """

    def __init__(self, module: StreamingModule, state: StreamState, example: torch.Tensor):
        if example.device.type != "cuda":
            raise ValueError("CUDA graph capture needs CUDA tensors")
        self.module, self.state = module, state
        self.input = example.clone()
        saved = state.clone()
        self.graph, self.output = capture(lambda: module.step(self.input, state))
        state.copy_(saved)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        return self.output
