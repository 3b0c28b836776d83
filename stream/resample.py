"""Polyphase resampling, offline and streaming, with identical numerics.

The filter and alignment follow ``scipy.signal.resample_poly`` (Kaiser-windowed
sinc, beta 5, half length ``10 * max(up, down)`` taps at the upsampled rate,
zero-phase: output ``m`` is centred on input time ``m * down / up``), so a
file resampled by legato matches the scientific Python reference.

With ``up / down = target_rate / source_rate`` in lowest terms, output ``m``
sits at upsampled index ``t = m * down + HALF`` and reads input samples
``i0 - j`` (``i0 = t // up``) with taps ``h[t % up + j * up]``: one of ``up``
short filters ("phases") per output, ``taps_per_phase`` multiply-adds each.

Streaming needs ``HALF / up`` input samples of look-ahead; a stream emits each
output as soon as its last input sample has arrived, and ``flush`` completes
the tail with the zeros offline padding would use. Output count after ``n``
inputs is ``ceil(n * up / down)``, as ``resample_poly``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from legato.kernels import dispatch, polyphase
from legato.stream.errors import SampleRateError

KAISER_BETA = 5.0
HALF_LENGTH_PER_RATE = 10  # half filter length = this x max(up, down), as resample_poly


def _design(up: int, down: int) -> np.ndarray:
    """Low-pass FIR at the upsampled rate, unit DC gain x up (resample_poly's firwin)."""
    max_rate = max(up, down)
    half = HALF_LENGTH_PER_RATE * max_rate
    num_taps = 2 * half + 1
    cutoff = 1.0 / max_rate  # relative to the upsampled Nyquist
    n = np.arange(num_taps) - (num_taps - 1) / 2.0
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(num_taps, KAISER_BETA)
    return h / h.sum() * up


@lru_cache(maxsize=64)
def _polyphase(up: int, down: int) -> tuple[torch.Tensor, int]:
    """(up, taps_per_phase) float32 phase filters, and the centring delay HALF."""
    h = _design(up, down)
    half = (len(h) - 1) // 2
    taps_per_phase = math.ceil(len(h) / up)
    padded = np.zeros(taps_per_phase * up)
    padded[: len(h)] = h
    phases = padded.reshape(taps_per_phase, up).T.copy()  # phases[p, j] = h[p + j * up]
    return torch.from_numpy(phases).to(torch.float32), half


class Resampler:
    """Resample (num_samples, channels) float32 audio from ``source_rate`` to ``target_rate``."""

    def __init__(self, source_rate: int, target_rate: int):
        for name, rate in (("source_rate", source_rate), ("target_rate", target_rate)):
            if not isinstance(rate, int) or rate <= 0:
                raise SampleRateError(f"{name} must be a positive integer number of Hz, got {rate!r}")
        g = math.gcd(source_rate, target_rate)
        self.source_rate, self.target_rate = source_rate, target_rate
        self.up, self.down = target_rate // g, source_rate // g
        self.identity = self.up == self.down
        if not self.identity:
            self.phases, self.delay = _polyphase(self.up, self.down)
            self.taps_per_phase = self.phases.shape[1]

    def output_length(self, num_inputs: int) -> int:
        return -(-num_inputs * self.up // self.down)

    def lookahead_samples(self) -> int:
        """Input samples an output waits for beyond its own time (latency of streaming)."""
        return 0 if self.identity else -(-self.delay // self.up)

    def _outputs(self, buf: torch.Tensor, buf_start: int, m0: int, m1: int) -> torch.Tensor:
        """Outputs m0..m1-1 from ``buf`` (holding input samples buf_start.. onward)."""
        return dispatch.call(polyphase.NAME, buf.device, buf, buf_start, m0, m1, self.phases, self.up, self.down, self.delay)

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """Offline: (n, C) -> (ceil(n * up / down), C)."""
        if self.identity:
            return audio.clone()
        n = audio.shape[0]
        m1 = self.output_length(n)
        last_input = (m1 - 1) * self.down // self.up + self.delay // self.up + 1 if m1 else 0
        # Zero padding before (taps reach back) and after (look-ahead past the end).
        left = self.taps_per_phase
        right = max(0, last_input - n + 1)
        buf = torch.cat([audio.new_zeros(left, audio.shape[1]), audio, audio.new_zeros(right, audio.shape[1])])
        return self._outputs(buf, -left, 0, m1)

    def stream(self) -> "ResampleStream":
        return ResampleStream(self)


class ResampleStream:
    """Per-stream resampling state: push chunks of any size, then flush."""

    def __init__(self, resampler: Resampler):
        self.r = resampler
        self.inputs_seen = 0
        self.outputs_emitted = 0
        self.channels: int | None = None
        self._buf: torch.Tensor | None = None
        self._buf_start = 0

    def _append(self, audio: torch.Tensor) -> None:
        if self.channels is None:
            self.channels = audio.shape[1]
            history = self.r.taps_per_phase
            self._buf = audio.new_zeros(history, self.channels)
            self._buf_start = -history
        elif audio.shape[1] != self.channels:
            raise ValueError(f"stream has {self.channels} channel(s), chunk has {audio.shape[1]}")
        self._buf = torch.cat([self._buf, audio])
        self.inputs_seen += audio.shape[0]

    def _emit_until(self, m1: int) -> torch.Tensor:
        r = self.r
        y = r._outputs(self._buf, self._buf_start, self.outputs_emitted, m1)
        self.outputs_emitted = max(self.outputs_emitted, m1)
        # Keep only what the next output's taps reach back to.
        next_first = (self.outputs_emitted * r.down + r.delay) // r.up - r.taps_per_phase + 1
        drop = max(0, next_first - self._buf_start)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return y

    def push(self, audio: torch.Tensor) -> torch.Tensor:
        """audio: (n, C) -> the outputs whose inputs are all here, (m, C)."""
        if self.r.identity:
            self.inputs_seen += audio.shape[0]
            self.channels = audio.shape[1]
            return audio
        self._append(audio)
        r = self.r
        ready = -(-(self.inputs_seen * r.up - r.delay) // r.down)  # outputs with i0 <= inputs_seen - 1
        return self._emit_until(max(self.outputs_emitted, ready))

    def flush(self) -> torch.Tensor:
        """The remaining outputs, reading zeros past the end (as offline)."""
        if self.r.identity or self._buf is None:
            return torch.zeros(0, self.channels or 1)
        r = self.r
        total = r.output_length(self.inputs_seen)
        pad = (total * r.down + r.delay) // r.up + 1 - (self._buf_start + self._buf.shape[0])
        if pad > 0:
            self._buf = torch.cat([self._buf, self._buf.new_zeros(pad, self._buf.shape[1])])
        return self._emit_until(total)
