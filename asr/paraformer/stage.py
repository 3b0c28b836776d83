"""Streaming Paraformer as an engine stage: 16 kHz audio in ``chunk_samples`` pieces in, TextEvents out.

Pipeline: ``ResampleStage(16000) | RechunkStage(chunk_samples) | ParaformerStage`` (``chunk_samples`` = 9600 for
[0, 10, 5]: FunASR's own sub-chunks). Each stream holds a slot in the front-end's state pool (fbank + LFR
carry-over) and one in the model's (encoder, CIF and decoder caches). A call runs the front-end for every full
piece (rows grouped by front-end phase), then model steps in rounds: rows with the same kind of step (a normal
step of ``stride`` frames, a final step of n frames, FunASR's tail chunk) share one batched step, so streams join
and leave at any chunk. A short piece is the stream's last: it waits for the end of stream, which decides between
a final step (at least one LFR hop of audio) and the tail chunk, as FunASR does.

Stream options: ``interim_results``; ``endpointing`` ``{"enabled", "min_silence_ms"}``: a final is sent once
that long (in whole chunks) has passed without a token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from legato.asr.endpointing import Endpointing
from legato.asr.paraformer.recognizer import ParaformerRecognizer
from legato.asr.utterance_events import utterance_events
from legato.stream.grouped_steps import run_grouped
from legato.stream.audio_io import to_mono
from legato.stream.errors import SampleRateError
from legato.stream.frames import AudioChunk, EndOfStream, Frame, TextEvent, TextKind
from legato.stream.graph import BatchItem, Stage, StreamInfo
from legato.stream.pool import StatePool

DEFAULT_MIN_SILENCE_MS = 600
TAIL = -1  # job size of FunASR's tail chunk


@dataclass
class _ParaformerContext:
    fe_slot: int
    slot: int
    interim: bool
    endpoint_steps: int | None  # steps without a token that end an utterance
    frames: torch.Tensor  # LFR frames not yet stepped (n, input_size)
    held: torch.Tensor | None = None  # the short last piece, until the end of stream
    steps_done: int = 0
    quiet_steps: int = 0
    tokens: list[int] = field(default_factory=list)  # current utterance
    utterance_start: int = 0  # step index
    last_partial: str = ""


class ParaformerStage(Stage):
    def __init__(self, recognizer: ParaformerRecognizer, *, capacity: int = 256, max_batch: int = 64, name: str = "paraformer"):
        if not recognizer.streaming:
            raise ValueError(f"{recognizer.name} is an offline Paraformer; live streaming needs a ParaformerStreaming folder")
        self.rec, self.name, self.max_batch = recognizer, name, max_batch
        self.device = str(recognizer.device)
        self.fe_pool = StatePool(recognizer.frontend, capacity, self.device)
        self.pool = StatePool(recognizer.streamer, capacity, self.device)
        self.stride = recognizer.chunk.stride
        self.step_s = recognizer.chunk_samples / recognizer.sample_rate

    def open(self, stream: StreamInfo) -> _ParaformerContext:
        opts = stream.options
        steps = Endpointing.from_options(opts, DEFAULT_MIN_SILENCE_MS).frames(self.step_s, ceil=True)
        fe = self.fe_pool.acquire()
        try:
            slot = self.pool.acquire()
        except Exception:
            self.fe_pool.release(fe)
            raise
        frames = torch.zeros(0, self.rec.model.cfg.input_size, device=self.device)
        return _ParaformerContext(fe, slot, bool(opts.get("interim_results", True)), steps, frames)

    def close(self, ctx: _ParaformerContext) -> None:
        self.fe_pool.release(ctx.fe_slot)
        self.pool.release(ctx.slot)

    # -- front-end ------------------------------------------------------------------------------

    def _append(self, ctx: _ParaformerContext, lfr: torch.Tensor) -> None:
        ctx.frames = torch.cat([ctx.frames, lfr])

    def _frontend(self, rows: list[tuple[_ParaformerContext, torch.Tensor]]) -> None:
        """Full pieces of many streams, batched where the front-end's phase agrees."""
        fe = self.rec.frontend
        groups: dict[tuple, list[tuple[_ParaformerContext, torch.Tensor]]] = {}
        for ctx, audio in rows:
            groups.setdefault((audio.shape[0], fe.batch_key(self.fe_pool.state, ctx.fe_slot)), []).append((ctx, audio))
        for members in groups.values():
            x = torch.stack([a for _, a in members]).to(self.device)
            y = self.fe_pool.step([c.fe_slot for c, _ in members], x)
            for (ctx, _), row in zip(members, y):
                self._append(ctx, row)

    def _last_piece(self, ctx: _ParaformerContext) -> bool:
        """At the end of stream: run the held piece and flush; False means FunASR's tail chunk instead."""
        held, ctx.held = ctx.held, None
        if held is None or held.shape[0] < self.rec.frame_samples:
            return False
        y = self.fe_pool.step([ctx.fe_slot], held[None].to(self.device))[0]
        tail = self.fe_pool.flush([ctx.fe_slot])
        self._append(ctx, torch.cat([y, tail[0]]) if tail is not None else y)
        return True

    # -- model ----------------------------------------------------------------------------------

    def _jobs(self, ctx: _ParaformerContext, end: bool) -> list[int]:
        """Step sizes for the frames this stream has: ``stride`` each, and at the end the rest (or TAIL)."""
        n = ctx.frames.shape[0]
        jobs = [self.stride] * (n // self.stride if not end else max(0, (n - 1) // self.stride))
        if end:
            jobs.append(n - self.stride * len(jobs))
        return jobs

    def _run(self, members: list[tuple[int, _ParaformerContext]], size: int, final: bool) -> dict[int, list[int]]:
        slots = [c.slot for _, c in members]
        state = self.pool.gather(slots)
        if size == TAIL:
            feats = None
        else:
            feats = torch.stack([c.frames[:size] for _, c in members]).to(self.device)
        out = self.rec.streamer.step(feats, state, final=final)
        self.pool.scatter(slots, state)  # commit only after the step succeeded
        for _, c in members:
            if size != TAIL:
                c.frames = c.frames[size:]
        return {i: ids for (i, _), ids in zip(members, out.ids)}

    @torch.inference_mode()
    def process(self, batch: Sequence[BatchItem]) -> list[list[Frame] | Exception]:
        out: list[list[Frame] | Exception] = [[] for _ in batch]
        full: list[tuple[_ParaformerContext, torch.Tensor]] = []
        for i, (ctx, frame) in enumerate(batch):
            if isinstance(frame, AudioChunk):
                if frame.sample_rate != self.rec.sample_rate:
                    out[i] = SampleRateError(f"{self.name} needs {self.rec.sample_rate} Hz audio, got {frame.sample_rate} Hz (resample first)")
                elif ctx.held is not None:
                    out[i] = ValueError(f"{self.name}: audio after a short piece (put RechunkStage({self.rec.chunk_samples}) first)")
                elif frame.num_samples == self.rec.chunk_samples:
                    full.append((ctx, to_mono(frame.samples)[:, 0]))
                else:
                    ctx.held = to_mono(frame.samples)[:, 0]
            elif not isinstance(frame, EndOfStream):
                out[i] = [frame]
        self._frontend(full)
        plans: dict[int, list[tuple[int, bool]]] = {}
        for i, (ctx, frame) in enumerate(batch):
            if isinstance(out[i], Exception) or not isinstance(frame, (AudioChunk, EndOfStream)):
                continue
            end = isinstance(frame, EndOfStream)
            try:
                if end and not self._last_piece(ctx):
                    jobs = [(n, False) for n in self._jobs(ctx, False)] + [(TAIL, True)]
                else:
                    jobs = self._jobs(ctx, end)
                    jobs = [(n, end and k == len(jobs) - 1) for k, n in enumerate(jobs)]
            except Exception as exc:  # this stream fails alone
                out[i] = exc
                continue
            plans[i] = jobs
        def run(rows: list[int], jobs: list[tuple[int, bool]]) -> None:
            size, final = jobs[0]
            for i, ids in self._run([(i, batch[i][0]) for i in rows], size, final).items():
                self._tokens(batch[i][0], ids)

        run_grouped(plans, lambda i, job: job, run, out.__setitem__)
        for i, (ctx, frame) in enumerate(batch):
            if isinstance(out[i], Exception) or not isinstance(frame, (AudioChunk, EndOfStream)):
                continue
            end = isinstance(frame, EndOfStream)
            out[i] = self._events(ctx, end) + ([frame] if end else [])
        return out

    def _tokens(self, ctx: _ParaformerContext, ids: list[int]) -> None:
        ctx.steps_done += 1
        ctx.tokens += ids
        ctx.quiet_steps = 0 if ids else ctx.quiet_steps + 1

    def _event(self, ctx: _ParaformerContext, kind: TextKind) -> TextEvent | None:
        text = self.rec.text(ctx.tokens)
        if not text:
            return None
        return TextEvent(kind, text, ctx.utterance_start * self.step_s, ctx.steps_done * self.step_s)

    def _events(self, ctx: _ParaformerContext, end: bool) -> list[Frame]:
        if not ctx.tokens:
            ctx.utterance_start = ctx.steps_done
            return []
        final = end or (ctx.endpoint_steps is not None and ctx.quiet_steps >= ctx.endpoint_steps)
        out = utterance_events(ctx, final, lambda kind: self._event(ctx, kind))
        if final:
            ctx.tokens, ctx.utterance_start = [], ctx.steps_done
        return out
