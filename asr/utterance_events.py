"""Partial and final text events of a streaming recognizer's current utterance (shared by the ASR stages)."""

from __future__ import annotations

from typing import Callable

from legato.stream.frames import Frame, TextEvent, TextKind


def utterance_events(ctx, final: bool, make: Callable[[TextKind], TextEvent | None]) -> list[Frame]:
    """The utterance's final when it ends, else its partial if interim results are on and the text changed.

    ``ctx`` has ``interim`` and ``last_partial``; ``make(kind)`` builds the event (None: no text). The caller
    starts its next utterance after a final."""
    if final:
        event = make(TextKind.FINAL)
        ctx.last_partial = ""
        return [event] if event is not None else []
    if not ctx.interim:
        return []
    event = make(TextKind.PARTIAL)
    if event is None or event.text == ctx.last_partial:
        return []
    ctx.last_partial = event.text
    return [event]
