"""Small streaming modules and stages used by the engine tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from legato.stream.frames import FeatureChunk, Frame
from legato.stream.graph import PerStreamStage
from legato.stream.module import StreamingModule
from legato.stream.state import StreamState


@dataclass(frozen=True, eq=False)
class SumState(StreamState):
    total: torch.Tensor  # (B, F)


class RunningSum(StreamingModule):
    """y[t] = x[0] + ... + x[t] over (B, T, F): the simplest stateful module."""

    time_axis = 1

    def __init__(self, features: int):
        super().__init__()
        self.features = features

    def init_state(self, batch_size, device=None):
        return SumState(torch.zeros(batch_size, self.features, device=device))

    def forward(self, x):
        return x.cumsum(1)

    def step(self, x, state):
        y = x.cumsum(1) + state.total[:, None]
        state.total.copy_(y[:, -1])
        return y


def feature_chunks(x: torch.Tensor, size: int) -> list[FeatureChunk]:
    """(T, F) -> FeatureChunks of ``size`` frames."""
    return [FeatureChunk(x[i : i + size], i, 160, 16000) for i in range(0, x.shape[0], size)]


def concat_features(frames) -> torch.Tensor:
    return torch.cat([f.features for f in frames if isinstance(f, FeatureChunk)])


class SlowStage(PerStreamStage):
    """Sleeps ``delay_s`` per step (or waits for ``gate``); records batch sizes and times."""

    accepts = (Frame,)

    def __init__(self, name="slow", delay_s=0.0, max_batch=1, gate: threading.Event | None = None):
        self.name, self.delay_s, self.max_batch, self.gate = name, delay_s, max_batch, gate
        self.calls: list[tuple[float, int]] = []

    def process(self, batch):
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay_s)
        self.calls.append((time.monotonic(), len(batch)))
        return super().process(batch)

    def handle(self, ctx, frame):
        return [frame]
