"""The TTS service core: each request is a stream on the engine; audio chunks come back to asyncio.

``stream(parsed)`` is an async iterator of ``(sample_offset, (n,) float32)``
at the requested rate. Each voice is a route of the engine (``tts:NAME``:
``VoiceStage | ResampleStage``), so synthesis runs on the engine's worker for
its device beside the ASR streams of the same process, batched across
requests, never on the event loop. The stream's output queue is bounded, so a
slow client stalls its own synthesis, not the server. Leaving the iterator
early (client cancel, deadline, error) cancels the stream: the voice's
generator is closed and its jobs dropped.
"""

from __future__ import annotations

from typing import AsyncIterator, Mapping

import torch

from legato.server.tts_requests import ParsedRequest
from legato.stream.engine import Engine
from legato.stream.errors import LegatoError
from legato.stream.frames import AudioChunk, ErrorEvent, SpeechRequest
from legato.tts.stage import route_name, voice_route
from legato.tts.voice import SynthesisError, Voice

TTS_BUDGET_S = 0.5  # how soon a request's next model step is due once it is running (its EDF priority beside ASR)
OUTPUT_CHUNKS = 64  # chunks a request may run ahead of its client (engine output queue, own engine only)


class SynthesisFailed(LegatoError, RuntimeError):
    """The voice failed on this request (its message says why); other requests go on."""

    code = "synthesis_failed"


def voice_routes(voices: Mapping[str, Voice]) -> dict:
    """The engine routes serving these voices, by route name."""
    return {route_name(name): voice_route(v) for name, v in voices.items()}


class TtsService:
    """Voices by name, served by ``engine`` (which must hold their routes: ``voice_routes``), or by an engine of
    its own when none is given (started here, stopped by ``close``)."""

    def __init__(self, voices: Mapping[str, Voice], default_voice: str | None = None, *, engine: Engine | None = None,
                 budget_s: float = TTS_BUDGET_S, max_requests: int = 256):
        if not voices:
            raise ValueError("the TTS service needs at least one voice")
        self.voices = dict(voices)
        self.default_voice = default_voice or next(iter(self.voices))
        if self.default_voice not in self.voices:
            raise ValueError(f"default voice {self.default_voice!r} is not configured")
        self.own_engine = engine is None
        self.engine = engine or Engine(voice_routes(self.voices), max_streams=max_requests, output_frames=OUTPUT_CHUNKS)
        missing = [n for n in self.voices if route_name(n) not in self.engine.routes]
        if missing:
            raise ValueError(f"the engine has no route for voices {missing}; build it with voice_routes(voices)")
        self.engine.start()
        self.budget_s = budget_s
        self.active = 0  # requests running (for metrics and tests)

    def close(self) -> None:
        if self.own_engine:
            self.engine.stop()

    async def stream(self, parsed: ParsedRequest) -> AsyncIterator[tuple[int, torch.Tensor]]:
        handle = self.engine.open_stream(self.budget_s, {"sample_rate": parsed.sample_rate}, route=route_name(parsed.voice.name))
        self.active += 1
        offset = 0
        try:
            await handle.apush(SpeechRequest(parsed.request))
            await handle.aend()
            async for frame in handle:
                if isinstance(frame, AudioChunk):
                    y = frame.samples[:, 0]
                    yield offset, y
                    offset += y.shape[0]
                elif isinstance(frame, ErrorEvent):
                    if frame.code == SynthesisError.code:  # the request's fault: INVALID_ARGUMENT, not INTERNAL
                        raise SynthesisError(frame.message.removeprefix("SynthesisError: "))
                    raise SynthesisFailed(frame.message)
        finally:
            self.active -= 1
            if not handle.finished:
                handle.cancel()

    async def synthesize(self, parsed: ParsedRequest) -> torch.Tensor:
        chunks = [c async for _, c in self.stream(parsed)]
        return torch.cat(chunks) if chunks else torch.zeros(0)
