"""A voice as an engine stage: TTS requests run on the same engine (and GPU worker) as ASR streams.

One stream per request: its input is one :class:`SpeechRequest` then
``EndOfStream``; its output is the voice's audio as ``AudioChunk`` frames at
the voice's native rate, then ``EndOfStream``. The stage is a *generating*
stage (``pending``): after the request arrives, the engine keeps scheduling
the stream with ``Tick`` frames until the voice's generator is exhausted.

Per step, for the streams the engine batched:

1. the jobs those streams have submitted (F5-TTS chunk solves) advance by one
   model step together, in one ``voice.step_jobs`` call of at most
   ``voice.max_jobs`` jobs, earliest ``due`` first (a job's optional ``due``:
   when its audio must start playing; a request's first chunk is due at once,
   later ones when the audio before them has played out). Finishing the most
   urgent jobs first, rather than sharing each step among all, keeps time to
   first audio low when requests pile up;
2. each stream's generator resumes until it yields one audio chunk (emitted),
   waits on a job that is not done, or ends.

Cancelling the stream closes its generator (the voice's ``finally`` runs) and
drops its jobs, so a client's cancel or deadline stops the model work.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from legato.stream.frames import AudioChunk, EndOfStream, Frame, SpeechRequest, Tick
from legato.stream.graph import BatchItem, Pipeline, Stage, StreamInfo
from legato.stream.stages import ResampleStage
from legato.tts.voice import Submit, Voice, Wait

MAX_STREAMS_PER_STEP = 64


@dataclass(eq=False)
class _Request:
    gen: Iterator[Any] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    jobs: list = field(default_factory=list)  # submitted, not done
    waiting: Any = None  # the job the generator waits for
    ending: bool = False  # EndOfStream arrived
    done: bool = False  # generator exhausted
    emitted: int = 0  # samples


class VoiceStage(Stage):
    def __init__(self, voice: Voice, *, max_batch: int | None = None, name: str | None = None):
        # a step can hold as many requests as the voice batches jobs (an AR voice: every running request)
        self.voice, self.max_batch = voice, max_batch or max(MAX_STREAMS_PER_STEP, voice.max_jobs)
        self.name = name or f"tts:{voice.name}"
        self.device = str(getattr(voice, "device", "cpu"))

    def open(self, stream: StreamInfo) -> _Request:
        return _Request()

    def close(self, ctx: _Request) -> None:
        ctx.cancelled.set()
        if ctx.gen is not None and not ctx.done:
            ctx.gen.close()
        ctx.jobs.clear()

    def pending(self, ctx: _Request) -> bool:
        return ctx.gen is not None and not ctx.done

    def process(self, batch: Sequence[BatchItem]) -> list[list[Frame] | BaseException]:
        out: list[list[Frame] | BaseException] = [[] for _ in batch]
        for r, (ctx, frame) in enumerate(batch):
            if isinstance(frame, SpeechRequest):
                if ctx.gen is not None:
                    out[r] = ValueError("a TTS stream takes one SpeechRequest")
                    continue
                ctx.gen = self.voice.stream(frame.request, ctx.cancelled)
            elif isinstance(frame, EndOfStream):
                ctx.ending = True
            elif not isinstance(frame, Tick):
                out[r] = [frame]
        live = [r for r, (ctx, _) in enumerate(batch) if not isinstance(out[r], BaseException) and self.pending(ctx)]
        self._step_jobs([batch[r][0] for r in live])
        for r in live:
            try:
                out[r] += self._advance(batch[r][0])
            except Exception as exc:  # this request alone fails
                batch[r][0].done = True
                out[r] = exc
        for r, (ctx, _) in enumerate(batch):
            if not isinstance(out[r], BaseException) and ctx.ending and not self.pending(ctx):
                out[r].append(EndOfStream())
                ctx.ending = False
        return out

    @torch.inference_mode()
    def _step_jobs(self, contexts: list[_Request]) -> None:
        """One batched model step over the most urgent jobs of these streams."""
        contexts = [c for c in contexts if c.jobs]
        waiting = sorted((j for c in contexts for j in c.jobs), key=lambda j: getattr(j, "due", 0.0))  # stable: submit order
        if not waiting:
            return
        self.voice.step_jobs(waiting[: self.voice.max_jobs])  # raising fails the step; the engine retries the streams alone
        for ctx in contexts:
            ctx.jobs = [j for j in ctx.jobs if not j.done]

    def _advance(self, ctx: _Request) -> list[Frame]:
        """Resume the generator until it yields audio, waits on an unfinished job, or ends."""
        if ctx.waiting is not None and not ctx.waiting.done:
            return []
        send, ctx.waiting = (ctx.waiting.result if ctx.waiting is not None else None), None
        while True:
            try:
                item = ctx.gen.send(send)
            except StopIteration:
                ctx.done = True
                return []
            send = None
            if isinstance(item, Submit):
                ctx.jobs += item.jobs
            elif isinstance(item, Wait):
                if not item.job.done:
                    ctx.waiting = item.job
                    return []
                send = item.job.result
            else:
                samples = item.detach().to(torch.float32).cpu().reshape(-1, 1)
                if not samples.shape[0]:
                    continue
                chunk = AudioChunk(samples.contiguous(), self.voice.sample_rate, ctx.emitted)
                ctx.emitted += samples.shape[0]
                return [chunk]


def voice_route(voice: Voice, **stage_options) -> Pipeline:
    """A voice's engine route: synthesis at its native rate, then each stream's requested rate (option ``sample_rate``)."""
    stage = VoiceStage(voice, **stage_options)
    return Pipeline([stage, ResampleStage(None, name=f"{stage.name}/resample")], name=route_name(voice.name))


def route_name(voice_name: str) -> str:
    return f"tts:{voice_name}"
