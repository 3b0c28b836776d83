"""The stream option ``endpointing`` read once for every ASR path: ``true``/``false`` or ``{"enabled",
"min_silence_ms", "threshold"}`` (docs/PROTOCOL.md). An utterance ends after ``min_silence_ms`` of silence (model
frames without new tokens for FastConformer and Paraformer; Silero VAD below ``threshold`` for Whisper)."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_SILENCE_MS = 60_000


@dataclass(frozen=True)
class Endpointing:
    enabled: bool
    min_silence_ms: int
    threshold: float  # Silero VAD speech probability (Whisper only)

    @classmethod
    def from_options(cls, options: dict, default_silence_ms: int, default_threshold: float = 0.5) -> "Endpointing":
        """A stream's options -> its endpointing; a value out of range is a ValueError (the client's)."""
        ep = options.get("endpointing")
        ep = {"enabled": ep} if isinstance(ep, bool) else (ep or {})
        if not isinstance(ep, dict):
            raise ValueError(f"endpointing must be true, false or an object, got {ep!r}")
        silence = ep.get("min_silence_ms")
        silence = default_silence_ms if silence is None else silence
        threshold = ep.get("threshold")
        threshold = default_threshold if threshold is None else threshold
        if isinstance(silence, bool) or not isinstance(silence, (int, float)) or not 0 < silence <= MAX_SILENCE_MS:
            raise ValueError(f"endpointing.min_silence_ms must lie in 1..{MAX_SILENCE_MS}, got {silence!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"endpointing.threshold must lie between 0 and 1, got {threshold!r}")
        return cls(bool(ep.get("enabled", True)), int(silence), float(threshold))

    def frames(self, frame_s: float, ceil: bool = False) -> int | None:
        """Silent model frames (of ``frame_s`` seconds) that end an utterance, at least 1; None when off. ``ceil``:
        round up (Paraformer counts whole steps), else to the nearest."""
        if not self.enabled:
            return None
        n = self.min_silence_ms / 1000 / frame_s
        return max(1, math.ceil(n) if ceil else round(n))
