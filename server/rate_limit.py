"""Per-client limits of the WebSocket server: an audio rate per stream, and streams per client address.

The engine shares each batched step fairly among the streams in it (``stream/engine.py``: up to ``MAX_FRAME_S`` of
audio each), so a client that sends faster than real time cannot starve paced ones. These limits bound what one
client may take of the machine over time:

- ``AudioRate``: a token bucket in seconds of audio. A stream may send ``burst_s`` of audio at once, then
  ``rate`` times real time. Past that the server waits before it reads the client's next message, exactly as under
  back-pressure: the client is slowed down, never closed.
- ``ClientCounts``: streams open per client address. Past the limit the upgrade gets HTTP 429. Off by default:
  behind a proxy every client has the proxy's address.
"""

from __future__ import annotations

from collections import Counter


class AudioRate:
    """One stream's audio allowance. ``rate`` 0 means no limit."""

    def __init__(self, rate: float, burst_s: float, now: float):
        self.rate, self.burst_s = rate, burst_s
        self._tokens, self._at = burst_s, now  # seconds of audio the stream may still send at once

    def take(self, seconds: float, now: float) -> float:
        """Spend ``seconds`` of audio; the wall seconds to wait before reading the client again (0: none).

        The bucket may go below zero (one message longer than the burst is taken whole): the wait pays it back."""
        if self.rate <= 0:
            return 0.0
        self._tokens = min(self.burst_s, self._tokens + (now - self._at) * self.rate) - seconds
        self._at = now
        return -self._tokens / self.rate if self._tokens < 0 else 0.0


class ClientCounts:
    """Open streams per client address. ``limit`` 0 means no limit."""

    def __init__(self, limit: int):
        self.limit, self._open = limit, Counter()

    def full(self, address: str) -> bool:
        return self.limit > 0 and self._open[address] >= self.limit

    def add(self, address: str) -> None:
        self._open[address] += 1

    def remove(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]
