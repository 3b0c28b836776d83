"""Frames: the typed values that flow through a legato graph.

Every frame is a small frozen dataclass. Units are in the field names
(``start_sample``, ``hop_samples``, ``start_s``) so a reader never has to guess
whether a number counts samples, frames or seconds.

Payload tensors keep time on the first axis of a single stream:

* ``AudioChunk.samples``   (num_samples, channels) float32 in [-1, 1]
* ``FeatureChunk.features`` (num_frames, num_features)
* ``TokenChunk.tokens``     (num_tokens,) int64

Batching across streams happens inside stages, never in frames: a frame
always belongs to exactly one stream.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch


class Frame:
    """Base of everything that flows between stages."""

    __slots__ = ()


@dataclass(frozen=True, eq=False)
class AudioChunk(Frame):
    """A run of PCM samples of one stream.

    ``samples``: (num_samples, channels) float32; ``start_sample`` counts samples
    of this stream at ``sample_rate`` since the stream began.
    """

    samples: torch.Tensor
    sample_rate: int
    start_sample: int = 0

    def __post_init__(self) -> None:
        if self.samples.dim() != 2:
            raise ValueError(f"AudioChunk.samples must be (num_samples, channels), got {tuple(self.samples.shape)}")
        if self.samples.dtype != torch.float32:
            raise ValueError(f"AudioChunk.samples must be float32, got {self.samples.dtype}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")

    @property
    def num_samples(self) -> int:
        return self.samples.shape[0]

    @property
    def channels(self) -> int:
        return self.samples.shape[1]

    @property
    def end_sample(self) -> int:
        return self.start_sample + self.num_samples

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate


@dataclass(frozen=True, eq=False)
class FeatureChunk(Frame):
    """Acoustic features (log-mel, fbank, LFR stacks) of one stream.

    ``features``: (num_frames, num_features); frame ``i`` of the chunk is frame
    ``start_frame + i`` of the stream, and one frame advances ``hop_samples``
    samples at ``sample_rate``.
    """

    features: torch.Tensor
    start_frame: int
    hop_samples: int
    sample_rate: int

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]

    @property
    def start_s(self) -> float:
        return self.start_frame * self.hop_samples / self.sample_rate


@dataclass(frozen=True, eq=False)
class TokenChunk(Frame):
    """Token ids emitted by a decoder; ``start_frame`` of each token when known.

    ``tokens``: (num_tokens,) int64; ``frames``: (num_tokens,) int64 or None.
    """

    tokens: torch.Tensor
    frames: torch.Tensor | None = None
    final: bool = False


class TextKind(enum.Enum):
    PARTIAL = "partial"  # may still change
    FINAL = "final"  # committed; never revised


@dataclass(frozen=True)
class WordTiming:
    word: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TextEvent(Frame):
    """Recognised text for a span of one stream, in stream seconds."""

    kind: TextKind
    text: str
    start_s: float
    end_s: float
    words: tuple[WordTiming, ...] = ()


@dataclass(frozen=True, eq=False)
class SpeechRequest(Frame):
    """Text to speak: the input of a text-to-speech route (``request`` is a ``legato.tts.voice.SynthesisRequest``)."""

    request: Any


@dataclass(frozen=True)
class Tick(Frame):
    """No new input: the engine gives this to a stage whose ``pending`` says it has work of its own for the stream
    (a generation in progress), so it can take its next step."""


@dataclass(frozen=True)
class EndOfStream(Frame):
    """No more input for this stream: stages flush what they hold, then pass it on."""


@dataclass(frozen=True)
class ErrorEvent(Frame):
    """A stream ended because of an error; ``code`` is a stable, documented name."""

    code: str
    message: str
    stage: str = ""
    details: dict[str, Any] = field(default_factory=dict)
