"""Decoding one sentence in frame windows whose concatenated audio equals decoding it whole.

After length regulation a sentence is a prior sample ``z_p`` of T frames. The reversed flow reads
``flow_reach`` (F) frames each side of an output frame and the decoder ``mel_context`` (L, R) frames,
all 'same'-padded with zeros at the sentence's edges. To emit frames [a, b):

- the decoder runs on flow output [a - L, b + R) (clipped to [0, T)) and keeps the audio of [a, b);
- flow output is exact for [s, e) when computed from flow input [s - F, e + F) (clipped); what the
  previous window already produced exactly is cached, so each flow frame is computed once. The first
  window computes only what it needs; the second computes the rest of the sentence, so the flow's
  overlap (2F frames, 2.5x a 16-frame window's own work) is paid once per sentence, not per window.

A window is exact, not approximately so: the only difference from the whole sentence is the
convolutions' float summation order. :class:`SentenceStream` is the per-sentence state (one request
owns it); :func:`decode_windows` runs the windows of many requests as one padded flow call and one
padded decoder call, each row equal to the row alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import Vits

FIRST_CHUNK_FRAMES = 16  # 186 ms of audio at 22.05 kHz / hop 256: the first audio leaves after this much decoding
MAX_CHUNK_FRAMES = 256  # windows grow to this: each re-decodes L + R context frames (22 for joe: 9 % of 256)
GROWTH = 16  # 16, 256, 256...: few windows a sentence (context is re-decoded at each boundary), and the second
# still finishes before the first's audio has played (256 frames decode in ~80 ms on 2 CPU cores; 16 frames last 186 ms)


@dataclass(eq=False)
class Window:
    """One decode job's inputs. Frames are sentence positions."""

    stream: "SentenceStream"
    emit: tuple[int, int]  # frames [a, b) whose audio this window yields
    flow_in: tuple[int, int]  # flow input frames (empty when the cache covers the decoder window)
    flow_keep: tuple[int, int]  # flow output frames that are exact and new
    dec_in: tuple[int, int]  # decoder input frames


class SentenceStream:
    """One sentence's decode progress: its prior, the exact flow output cached, frames emitted."""

    def __init__(self, model: Vits, z_p: torch.Tensor, g: torch.Tensor | None, first: int = FIRST_CHUNK_FRAMES, largest: int = MAX_CHUNK_FRAMES):
        self.z_p, self.g = z_p, g  # (C, T), (gin, 1) or None
        self.frames = z_p.shape[1]
        self.reach = model.cfg.flow_reach
        self.left, self.right = model.cfg.decoder.mel_context
        self.hop = model.cfg.hop_length
        self.emitted = 0
        self.chunk, self.largest = first, largest
        self.cache = z_p[:, :0]  # exact flow output for frames [cache_start, cache_start + width)
        self.cache_start = 0

    @property
    def done(self) -> bool:
        return self.emitted >= self.frames

    def next_window(self) -> Window:
        a = self.emitted
        b = min(self.frames, a + self.chunk)
        self.chunk = min(self.largest, GROWTH * self.chunk)
        ds, de = max(0, a - self.left), min(self.frames, b + self.right)
        ns = max(ds, self.cache_start + self.cache.shape[1])
        ne = de if a == 0 else self.frames  # after the first window: the flow for the rest of the sentence at once
        fs, fe = (max(0, ns - self.reach), min(self.frames, ne + self.reach)) if ns < de else (ns, ns)
        return Window(self, (a, b), (fs, fe), (ns, max(ns, ne) if ns < de else ns), (ds, de))

    def accept(self, window: Window, new_flow: torch.Tensor) -> torch.Tensor:
        """Cache the window's exact flow output and return its decoder input (C, de - ds)."""
        ds, de = window.dec_in
        if ds < self.cache_start:
            raise AssertionError("decoder window starts before the cached flow output")
        flow = torch.cat([self.cache[:, ds - self.cache_start :], new_flow], 1)  # exact flow output from ds on
        assert flow.shape[1] >= de - ds
        keep = max(ds, window.emit[1] - self.left)  # the next window's decoder starts no earlier
        self.cache, self.cache_start = flow[:, keep - ds :], keep
        return flow[:, : de - ds]

    def finish(self, window: Window) -> None:
        self.emitted = window.emit[1]


@dataclass(frozen=True)
class Buckets:
    """Padded batch shapes rounded up, so a GPU sees few distinct shapes: cuDNN builds a plan for each new
    convolution shape on the CPU (measured on an H100: a 44-row decoder call 11 ms with a known shape, 82 ms
    with a new one), and under load every step's (rows, frames) is new. Padded rows have length 0."""

    frames: int = 32  # widths rounded up to a multiple of this

    def rows(self, n: int) -> int:
        """1, 2, 4, 8, then multiples of 8: at most 12 % padding rows above 8."""
        return n if n <= 2 else 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8

    def width(self, t: int) -> int:
        return -(-t // self.frames) * self.frames


def pad_batch(rows: list[torch.Tensor], buckets: Buckets | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[(C, t_i)] -> (B, C, width) zero-padded, lengths (B,); with buckets B and width are rounded up (extra rows
    have length 0)."""
    widths = [r.shape[1] for r in rows]
    n, width = len(rows), max(widths)  # the width from the host: no device sync
    if buckets is not None:
        n, width = buckets.rows(n), buckets.width(width)
    lengths = torch.tensor(widths + [0] * (n - len(rows)), device=rows[0].device)
    out = rows[0].new_zeros(n, rows[0].shape[0], width)
    for i, r in enumerate(rows):
        out[i, :, : r.shape[1]] = r
    return out, lengths


def _speakers(windows: list[Window], n: int) -> torch.Tensor | None:
    if windows[0].stream.g is None:
        return None
    g = [w.stream.g for w in windows]
    return torch.stack(g + g[:1] * (n - len(g)))  # padded rows take the first row's speaker: their output is dropped


@torch.inference_mode()
def decode_windows(model: Vits, windows: list[Window], buckets: Buckets | None = None) -> list[torch.Tensor]:
    """Audio (samples,) for each window: one flow call over their new frames, one decoder call over their windows;
    with ``buckets``, both calls' shapes are rounded up (for a GPU)."""
    flowing = [w for w in windows if w.flow_in[1] > w.flow_in[0]]
    new_flow: dict[int, torch.Tensor] = {}
    if flowing:
        x, lengths = pad_batch([w.stream.z_p[:, w.flow_in[0] : w.flow_in[1]] for w in flowing], buckets)
        mask = (torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]).unsqueeze(1).to(x.dtype)
        z = model.flow(x * mask, mask, _speakers(flowing, x.shape[0]))
        for i, w in enumerate(flowing):
            lo, hi = w.flow_keep[0] - w.flow_in[0], w.flow_keep[1] - w.flow_in[0]
            new_flow[id(w)] = z[i, :, lo:hi]
    dec_rows = []
    for w in windows:
        empty = w.stream.z_p[:, :0]
        dec_rows.append(w.stream.accept(w, new_flow.get(id(w), empty)))
    x, lengths = pad_batch(dec_rows, buckets)
    padded = x.shape[0] > 1 or x.shape[2] > dec_rows[0].shape[1]
    wav = model.dec(x, _speakers(windows, x.shape[0]), lengths if padded else None)
    out = []
    hop = model.cfg.hop_length
    for i, w in enumerate(windows):
        a, b = w.emit
        ds = w.dec_in[0]
        out.append(wav[i, (a - ds) * hop : (b - ds) * hop])
        w.stream.finish(w)
    return out
