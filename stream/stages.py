"""Built-in stages: resample, rechunk, batched model steps, batched streaming front-ends.

``ModelStage`` is the bridge between the engine and a :class:`StreamingModule`:
it owns the module's :class:`StatePool`, gives each stream a slot on open,
stacks one chunk per stream into a batch, steps the pool, and splits the
result back into per-stream frames.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from legato.stream.audio_io import to_mono
from legato.stream.errors import SampleRateError
from legato.stream.frames import AudioChunk, EndOfStream, FeatureChunk, Frame
from legato.stream.graph import BatchItem, PerStreamStage, Stage, StreamInfo
from legato.stream.module import StreamingModule
from legato.stream.pool import StatePool
from legato.stream.resample import Resampler


class ResampleStage(PerStreamStage):
    """Any sample rate in, ``target_rate`` out (optionally down-mixed to mono).

    ``target_rate=None``: each stream names its own output rate in its options
    (``sample_rate``), as a TTS request does."""

    accepts = (AudioChunk,)

    def __init__(self, target_rate: int | None, mono: bool = True, name: str = "resample"):
        self.target_rate, self.mono, self.name = target_rate, mono, name
        self._resamplers: dict[tuple[int, int], Resampler] = {}

    def open(self, stream: StreamInfo) -> dict:
        target = self.target_rate or int(stream.options.get("sample_rate") or 0)
        if target <= 0:
            raise ValueError(f"stage {self.name}: the stream's options need a positive 'sample_rate' (the output rate)")
        return {"stream": None, "rate": None, "emitted": 0, "target": target}

    def _resampler(self, rate: int, target: int) -> Resampler:
        if (rate, target) not in self._resamplers:
            self._resamplers[rate, target] = Resampler(rate, target)
        return self._resamplers[rate, target]

    def handle(self, ctx: dict, chunk: AudioChunk) -> list[Frame]:
        if ctx["rate"] is None:
            ctx["rate"], ctx["stream"] = chunk.sample_rate, self._resampler(chunk.sample_rate, ctx["target"]).stream()
        elif chunk.sample_rate != ctx["rate"]:
            raise SampleRateError(f"sample rate changed mid-stream from {ctx['rate']} to {chunk.sample_rate} Hz")
        samples = to_mono(chunk.samples) if self.mono else chunk.samples
        return self._emit(ctx, ctx["stream"].push(samples))

    def finish(self, ctx: dict) -> list[Frame]:
        return self._emit(ctx, ctx["stream"].flush()) if ctx["stream"] is not None else []

    def _emit(self, ctx: dict, samples: torch.Tensor) -> list[Frame]:
        if samples.shape[0] == 0:
            return []
        out = AudioChunk(samples.contiguous(), ctx["target"], ctx["emitted"])
        ctx["emitted"] += samples.shape[0]
        return [out]


class RechunkStage(PerStreamStage):
    """Regroup audio into chunks of exactly ``chunk_samples`` (the last one may be short).

    Batched stages need equal chunk lengths across streams; clients send
    whatever sizes they like.
    """

    accepts = (AudioChunk,)

    def __init__(self, chunk_samples: int, name: str = "rechunk"):
        if chunk_samples <= 0:
            raise ValueError("chunk_samples must be positive")
        self.chunk_samples, self.name = chunk_samples, name

    def open(self, stream: StreamInfo) -> dict:
        return {"pending": [], "held": 0, "start": None, "rate": None}

    def handle(self, ctx: dict, chunk: AudioChunk) -> list[Frame]:
        if ctx["start"] is None:
            ctx["start"], ctx["rate"] = chunk.start_sample, chunk.sample_rate
        ctx["pending"].append(chunk.samples)
        ctx["held"] += chunk.num_samples
        out: list[Frame] = []
        if ctx["held"] >= self.chunk_samples:
            buf = torch.cat(ctx["pending"])
            whole = buf.shape[0] // self.chunk_samples * self.chunk_samples
            for lo in range(0, whole, self.chunk_samples):
                out.append(AudioChunk(buf[lo : lo + self.chunk_samples].contiguous(), ctx["rate"], ctx["start"]))
                ctx["start"] += self.chunk_samples
            ctx["pending"], ctx["held"] = [buf[whole:]], buf.shape[0] - whole
        return out

    def finish(self, ctx: dict) -> list[Frame]:
        if not ctx["held"]:
            return []
        return [AudioChunk(torch.cat(ctx["pending"]).contiguous(), ctx["rate"], ctx["start"])]


class ModelStage(Stage):
    """Batched steps of a streaming module over pooled per-stream state.

    ``model_input(ctx, frame)`` turns one stream's frame into its batch row
    (without the batch axis); ``model_output(ctx, frame, row)`` wraps one row of
    the module's output as frames. The defaults map ``FeatureChunk`` to
    ``FeatureChunk``; subclasses override both for other frame types. Items
    whose inputs differ in shape, or whose state rows differ in the module's
    ``batch_key``, are stepped in separate sub-batches (a stream's short last
    chunk; a stream in its first chunk beside streams in steady state).
    """

    accepts: tuple[type, ...] = (FeatureChunk,)

    def __init__(self, module: StreamingModule, *, name: str, capacity: int, max_batch: int, device: str | torch.device | None = None):
        self.module, self.name, self.max_batch = module, name, max_batch
        self.pool = StatePool(module, capacity, device)
        self.device = str(self.pool.device)

    def open(self, stream: StreamInfo) -> dict:
        return {"slot": self.pool.acquire(), "last": None}

    def close(self, ctx: dict) -> None:
        self.pool.release(ctx["slot"])

    def model_input(self, ctx: dict, frame: Frame) -> torch.Tensor:
        return frame.features  # type: ignore[attr-defined]

    def model_output(self, ctx: dict, frame: Frame, row: torch.Tensor) -> list[Frame]:
        assert isinstance(frame, FeatureChunk)
        return [FeatureChunk(row.detach().cpu(), frame.start_frame, frame.hop_samples, frame.sample_rate)]

    @torch.inference_mode()
    def process(self, batch: Sequence[BatchItem]) -> list[list[Frame]]:
        out: list[list[Frame]] = [[] for _ in batch]
        groups: dict[tuple, list[int]] = {}
        inputs: dict[int, torch.Tensor] = {}
        for i, (ctx, frame) in enumerate(batch):
            if isinstance(frame, self.accepts):
                inputs[i] = self.model_input(ctx, frame)
                key = (tuple(inputs[i].shape), self.module.batch_key(self.pool.state, ctx["slot"]))
                groups.setdefault(key, []).append(i)
        commits = []  # saved state is written back only once every step has succeeded
        for rows in groups.values():
            slots = [batch[i][0]["slot"] for i in rows]
            work = self.pool.gather(slots)
            y = self.module.step(torch.stack([inputs[i] for i in rows]).to(self.pool.device), work)
            y = y.detach().cpu()  # one device-to-host copy for the batch, not one (and a sync) per row
            commits.append((slots, work))
            for j, i in enumerate(rows):
                out[i].extend(self.model_output(batch[i][0], batch[i][1], y[j]))
                batch[i][0]["last"] = batch[i][1]
        for i, (ctx, frame) in enumerate(batch):
            if isinstance(frame, EndOfStream):
                work = self.pool.gather([ctx["slot"]])
                tail = self.module.flush(work)
                commits.append(([ctx["slot"]], work))
                if tail is not None and tail.shape[self.module.time_axis] > 0 and ctx["last"] is not None:
                    out[i].extend(self.model_output(ctx, ctx["last"], tail[0]))
                out[i].append(frame)
            elif i not in inputs:
                out[i].append(frame)  # not ours: pass through
        for slots, work in commits:
            self.pool.scatter(slots, work)
        return out


class FrontendStage(ModelStage):
    """Mono audio in, features out, for many streams at once (a streaming front-end over pooled state).

    ``frontend`` maps (B, samples) to (B, frames, features) and advances
    ``hop_samples`` per frame. Put a :class:`RechunkStage` before it so streams
    share chunk lengths and batch together.
    """

    accepts = (AudioChunk,)

    def __init__(self, frontend: StreamingModule, *, hop_samples: int, sample_rate: int, name: str = "frontend", capacity: int = 256, max_batch: int = 64, device=None):
        super().__init__(frontend, name=name, capacity=capacity, max_batch=max_batch, device=device)
        self.hop_samples, self.sample_rate = hop_samples, sample_rate

    def open(self, stream: StreamInfo) -> dict:
        ctx = super().open(stream)
        ctx["frames"] = 0
        return ctx

    def model_input(self, ctx: dict, frame: Frame) -> torch.Tensor:
        assert isinstance(frame, AudioChunk)
        if frame.sample_rate != self.sample_rate:
            raise SampleRateError(f"{self.name} needs {self.sample_rate} Hz audio, got {frame.sample_rate} Hz (resample first)")
        return to_mono(frame.samples)[:, 0]

    def model_output(self, ctx: dict, frame: Frame, row: torch.Tensor) -> list[Frame]:
        if row.shape[0] == 0:
            return []
        chunk = FeatureChunk(row.detach().cpu(), ctx["frames"], self.hop_samples, self.sample_rate)
        ctx["frames"] += row.shape[0]
        return [chunk]


class FunctionStage(PerStreamStage):
    """Wrap a per-frame function ``fn(frame) -> list[Frame]`` (tests, small adapters)."""

    def __init__(self, fn: Callable[[Frame], list[Frame]], accepts: tuple[type, ...] = (Frame,), name: str = "function"):
        self.fn, self.accepts, self.name = fn, accepts, name

    def handle(self, context: Any, frame: Frame) -> list[Frame]:
        return self.fn(frame)
