"""What the TTS service needs from a voice: a name, a native rate, and streamed synthesis.

A voice turns one :class:`SynthesisRequest` into float32 mono chunks at its
native rate, as soon as each is final: ``stream`` is a generator. It runs on
an engine worker (``tts/stage.py``), never on the event loop; a cancelled
request's generator is closed, so its model work stops at the next yield.

A voice whose model batches across requests (F5-TTS's flow-matching steps)
also yields :class:`Submit` (start these jobs) and :class:`Wait` (resume me
with this job's result when it is done). The engine stage then advances the
jobs of all requests together with one ``step_jobs`` call per round; a
voice with no jobs yields only audio. ``chunks`` drives one request alone
through the same stage (tests, scripts).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from legato.stream.errors import LegatoError


class SynthesisError(LegatoError, ValueError):
    """The request cannot be synthesised by this voice (bad reference audio, unsupported option)."""

    code = "bad_request"


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    speed: float = 1.0  # > 1 speaks faster
    reference_audio: torch.Tensor | None = None  # (n,) float32 mono at reference_rate
    reference_rate: int = 0
    reference_text: str = ""


@dataclass(frozen=True, eq=False)
class Submit:
    """Start these jobs (objects with ``done`` and ``result``); the generator resumes at once."""

    jobs: list


@dataclass(frozen=True, eq=False)
class Wait:
    """Resume the generator with ``job.result`` once ``job.done``."""

    job: Any


class Voice:
    name: str = "voice"
    model: str = "unknown"  # model family, shown by ListVoices
    sample_rate: int = 22050  # Hz of what ``stream`` yields
    supports_reference: bool = False
    language: str = "en"
    device: str = "cpu"  # the engine worker that runs it
    max_jobs: int = 16  # jobs per ``step_jobs`` call

    def stream(self, request: SynthesisRequest, cancelled: threading.Event) -> Iterator[Any]:
        """Yield (n,) float32 chunks at ``sample_rate`` (and Submit/Wait for batched jobs); stop once ``cancelled``."""
        raise NotImplementedError

    def step_jobs(self, jobs: list) -> None:
        """Advance every job by one model step (one batched call); set ``done``/``result`` on those that finish."""
        raise NotImplementedError(f"voice {self.name!r} submitted jobs but has no step_jobs")

    def chunks(self, request: SynthesisRequest, cancelled: threading.Event | None = None) -> Iterator[torch.Tensor]:
        """The audio chunks of one request driven alone, through the same voice stage the engine runs."""
        from legato.stream.frames import SpeechRequest, Tick
        from legato.tts.stage import VoiceStage

        stage = VoiceStage(self)
        ctx = stage.open(None)
        if cancelled is not None:
            ctx.cancelled = cancelled
        try:
            frame = SpeechRequest(request)
            while not ctx.cancelled.is_set():
                (out,) = stage.process([(ctx, frame)])
                if isinstance(out, BaseException):
                    raise out
                for chunk in out:
                    yield chunk.samples[:, 0]
                if not stage.pending(ctx):
                    return
                frame = Tick()
        finally:
            stage.close(ctx)

    def synthesize(self, request: SynthesisRequest) -> torch.Tensor:
        chunks = list(self.chunks(request))
        return torch.cat(chunks) if chunks else torch.zeros(0)
