"""What the TTS service needs from a voice: a name, a native rate, and streamed synthesis.

A voice turns one :class:`SynthesisRequest` into float32 mono chunks at its
native rate, as soon as each is final. It runs on a worker thread, never on
the event loop, and checks ``cancelled`` between chunks so a client's cancel
or deadline stops its model work.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

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


class Voice:
    name: str = "voice"
    model: str = "unknown"  # model family, shown by ListVoices
    sample_rate: int = 22050  # Hz of what ``stream`` yields
    supports_reference: bool = False
    language: str = "en"

    def stream(self, request: SynthesisRequest, cancelled: threading.Event) -> Iterator[torch.Tensor]:
        """Yield (n,) float32 chunks at ``sample_rate``; stop early when ``cancelled`` is set."""
        raise NotImplementedError

    def synthesize(self, request: SynthesisRequest) -> torch.Tensor:
        chunks = list(self.stream(request, threading.Event()))
        return torch.cat(chunks) if chunks else torch.zeros(0)
