"""Transcript segments as SubRip (.srt) and WebVTT (.vtt) text, as OpenAI's ``response_format`` srt / vtt give them."""

from __future__ import annotations

from typing import Iterable


def _clock(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def srt(segments: Iterable[tuple[float, float, str]]) -> str:
    """(start s, end s, text) per cue -> SubRip: numbered cues, ``HH:MM:SS,mmm`` times."""
    cues = [f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text.strip()}\n" for i, (a, b, text) in enumerate(segments, 1)]
    return "\n".join(cues)


def vtt(segments: Iterable[tuple[float, float, str]]) -> str:
    """(start s, end s, text) per cue -> WebVTT: the header, then ``HH:MM:SS.mmm`` times."""
    cues = [f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text.strip()}\n" for a, b, text in segments]
    return "WEBVTT\n\n" + "\n".join(cues)
