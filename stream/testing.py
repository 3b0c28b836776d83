"""A test harness for stages and pipelines: push frames in, assert frames out.

For users writing their own stages as much as for legato's tests::

    from legato.stream.testing import StageHarness
    h = StageHarness(MyStage())
    assert h.push(chunk) == [...]
    tail = h.end()            # flush; the last frame is EndOfStream

``run_streams`` runs a pipeline for several streams through a real
:class:`~legato.stream.engine.Engine` (threads, batching, back-pressure).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from legato.stream.engine import Engine
from legato.stream.frames import AudioChunk, EndOfStream, Frame
from legato.stream.graph import Stage, StreamInfo


class StageHarness:
    """Drive one stream through a stage (or pipeline) synchronously, without an engine."""

    def __init__(self, stage: Stage, info: StreamInfo | None = None):
        self.stage = stage
        self.context = stage.open(info or StreamInfo("test"))
        self.closed = False

    def push(self, *frames: Frame) -> list[Frame]:
        if self.closed:
            raise RuntimeError("harness already ended")
        out: list[Frame] = []
        for frame in frames:
            result = self.stage.process([(self.context, frame)])[0]
            if isinstance(result, BaseException):
                raise result
            out.extend(result)
        return out

    def end(self) -> list[Frame]:
        out = self.push(EndOfStream())
        self.stage.close(self.context)
        self.closed = True
        return out


def run_stage(stage: Stage, frames: Iterable[Frame], info: StreamInfo | None = None) -> list[Frame]:
    """All output of one stream: push every frame, then end it."""
    h = StageHarness(stage, info)
    out = h.push(*frames)
    return out + h.end()


def run_streams(
    pipeline: Stage,
    inputs: dict[str, Sequence[Frame]],
    *,
    timeout_s: float = 30.0,
    **engine_kwargs,
) -> dict[str, list[Frame]]:
    """Run several streams concurrently through an engine; returns each stream's output."""
    import threading

    results: dict[str, list[Frame]] = {}
    with Engine(pipeline, **engine_kwargs) as engine:
        handles = {sid: engine.open_stream(stream_id=sid) for sid in inputs}

        def feed(sid: str) -> None:
            for frame in inputs[sid]:
                handles[sid].push(frame, timeout=timeout_s)
            handles[sid].end(timeout=timeout_s)

        feeders = [threading.Thread(target=feed, args=(sid,), daemon=True) for sid in inputs]
        for t in feeders:
            t.start()
        for sid, h in handles.items():
            results[sid] = h.results(timeout=timeout_s)
        for t in feeders:
            t.join(timeout_s)
    return results


def audio_chunks(samples: torch.Tensor, sample_rate: int, sizes: Sequence[int] | int) -> list[AudioChunk]:
    """Split (num_samples, channels) audio into AudioChunks of the given size(s)."""
    if samples.dim() == 1:
        samples = samples[:, None]
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    out, start, i = [], 0, 0
    while start < samples.shape[0]:
        n = sizes[min(i, len(sizes) - 1)]
        out.append(AudioChunk(samples[start : start + n].contiguous(), sample_rate, start))
        start += n
        i += 1
    return out


def concat_audio(frames: Iterable[Frame]) -> torch.Tensor:
    """Concatenate the samples of every AudioChunk among ``frames``."""
    chunks = [f.samples for f in frames if isinstance(f, AudioChunk)]
    return torch.cat(chunks) if chunks else torch.zeros(0, 1)
