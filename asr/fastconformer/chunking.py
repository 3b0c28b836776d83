"""How one stream's mel frames are cut into encoder steps, and a driver that streams whole batches.

A stream's first step takes ``1 + 8R`` mel frames, every later step
``8(R + 1)`` (R = the lookahead's right context, 8 = subsampling factor), so
each step yields one attention chunk of ``R + 1`` encoder frames. At the end
the frames still held (always fewer than a step) go in one last, zero-padded
step marked ``final``; its valid output frames are what offline would give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from legato.asr.fastconformer.encoder import FastConformerEncoder


@dataclass
class MelStep:
    mel: torch.Tensor  # (T_mel, F) zero padded to the step's width
    valid: int  # real frames
    first: bool
    final: bool


@dataclass
class MelChunker:
    """Per-stream buffer of mel frames (T, F) -> :class:`MelStep` s of the widths the encoder wants."""

    first_frames: int
    later_frames: int
    pending: list[torch.Tensor] = field(default_factory=list)
    held: int = 0
    steps: int = 0

    def push(self, mel: torch.Tensor) -> list[MelStep]:
        if mel.shape[0]:
            self.pending.append(mel)
            self.held += mel.shape[0]
        out = []
        while self.held >= self._width():
            buf = torch.cat(self.pending)
            w = self._width()
            out.append(MelStep(buf[:w], w, self.steps == 0, False))
            self.pending, self.held = [buf[w:]], buf.shape[0] - w
            self.steps += 1
        return out

    def finish(self, num_features: int) -> MelStep | None:
        """The final step (None if the stream brought no mel at all)."""
        if self.steps == 0 and self.held == 0:
            return None
        w = self._width()
        mel = torch.zeros(w, num_features)
        if self.held:
            buf = torch.cat(self.pending)
            mel[: buf.shape[0]] = buf
        step = MelStep(mel, self.held, self.steps == 0, True)
        self.pending, self.held = [], 0
        self.steps += 1
        return step

    def _width(self) -> int:
        return self.first_frames if self.steps == 0 else self.later_frames


@torch.inference_mode()
def stream_steps(encoder: FastConformerEncoder, mel: torch.Tensor, lengths: torch.Tensor, lookahead: int = 0) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Stream every row of mel (B, T, F) chunk by chunk, the rows still going batched together.

    Yields per step (batch rows stepped, output (n, right + 1, d_model), valid output frames (n,)).
    """
    b, _, f = mel.shape
    first_w, later_w = encoder.expected_mel(lookahead, True), encoder.expected_mel(lookahead, False)
    state = encoder.init_state(b, device=mel.device)
    consumed = [0] * b
    done = [int(n) == 0 for n in lengths.tolist()]
    first = True
    while not all(done):
        rows = [i for i in range(b) if not done[i]]
        w = first_w if first else later_w
        chunk = torch.zeros(len(rows), w, f, device=mel.device, dtype=mel.dtype)
        valid, final = [], []
        for j, i in enumerate(rows):
            n = min(w, int(lengths[i]) - consumed[i])
            chunk[j, :n] = mel[i, consumed[i] : consumed[i] + n]
            valid.append(n)
            final.append(n < w)
        sel = torch.tensor(rows, device=mel.device)
        work = state.gather(sel)
        y, v = encoder.stream_step(
            chunk, work, lookahead=lookahead, first=first, valid=torch.tensor(valid, device=mel.device), final=torch.tensor(final, device=mel.device)
        )
        state.scatter_(sel, work)
        for j, i in enumerate(rows):
            consumed[i] += valid[j]
            done[i] = final[j]
        first = False
        yield rows, y, v


def encode_streaming(encoder: FastConformerEncoder, mel: torch.Tensor, lengths: torch.Tensor, lookahead: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Streamed encoder output (B, T', d_model), zero padded, and lengths (B,): equal to
    ``encoder(mel, lengths, lookahead)`` on the valid frames."""
    b = mel.shape[0]
    outs: list[list[torch.Tensor]] = [[] for _ in range(b)]
    for rows, y, v in stream_steps(encoder, mel, lengths, lookahead):
        for j, i in enumerate(rows):
            outs[i].append(y[j, : int(v[j])])
    out_len = torch.tensor([sum(o.shape[0] for o in row) for row in outs])
    out = torch.zeros(b, int(out_len.max()) if b else 0, encoder.cfg.d_model, device=mel.device)
    for i, row in enumerate(outs):
        if row:
            out[i, : int(out_len[i])] = torch.cat(row)
    return out, out_len
