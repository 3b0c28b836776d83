"""FunASR's low frame rate stacking (LFR) and global CMVN from a Kaldi-nnet ``am.mvn`` file.

LFR turns ``T`` fbank frames of ``D`` features into ``ceil(T / n)`` frames of
``m * D``: output ``i`` concatenates rows ``[i * n, i * n + m)`` of the input
with ``(m - 1) // 2`` copies of the first frame in front and, where rows run
out, copies of the last frame behind (FunASR's ``apply_lfr``). Paraformer uses
``m = 7, n = 6``: 60 ms per output, three frames of left context.

Streaming emits output ``i`` as soon as its ``m`` rows exist; only the outputs
that need end padding wait for ``flush``, because the last frame is unknown
until then.

CMVN is per feature and needs no state: ``(x + shift) * scale`` with the
``<AddShift>`` and ``<Rescale>`` vectors of ``am.mvn`` (FunASR's ``apply_cmvn``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from os import PathLike

import torch
from torch import nn

from legato.asr.frontends.framing import frames_in, uniform_count
from legato.stream.module import StreamingModule
from legato.stream.state import StreamState


@dataclass(frozen=True)
class LfrConfig:
    """Low frame rate stacking; defaults are Paraformer's (and SenseVoice's)."""

    lfr_m: int = 7  # input frames per output frame
    lfr_n: int = 6  # input frames between outputs

    def __post_init__(self) -> None:
        # n > m would skip input rows between outputs; no FunASR model does that.
        if not 1 <= self.lfr_n <= self.lfr_m:
            raise ValueError(f"need 1 <= lfr_n ({self.lfr_n}) <= lfr_m ({self.lfr_m})")

    @property
    def left_pad(self) -> int:
        """Copies of the first frame in front: (m - 1) // 2 (3 for m = 7)."""
        return (self.lfr_m - 1) // 2


def lfr_frames(num_frames: int, lfr_n: int) -> int:
    """Outputs for ``num_frames`` input frames: ``ceil(num_frames / lfr_n)``."""
    return -(-num_frames // lfr_n)


@dataclass(frozen=True, eq=False)
class LfrState(StreamState):
    rows: torch.Tensor  # (B, lfr_m, D) padded input rows from the next output's first row on
    count: torch.Tensor  # (B,) int64 valid rows in ``rows``
    seen: torch.Tensor  # (B,) int64 input frames received so far


class Lfr(StreamingModule):
    """(B, T, D) frames -> (B, ceil(T / n), m * D) stacked frames."""

    time_axis = 1

    def __init__(self, config: LfrConfig = LfrConfig(), num_features: int = 80):
        super().__init__()
        self.config, self.num_features = config, num_features

    @classmethod
    def from_config(cls, config: LfrConfig, num_features: int = 80) -> "Lfr":
        return cls(config, num_features)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[2] != self.num_features:
            raise ValueError(f"LFR input must be (batch, frames, {self.num_features}), got shape {tuple(x.shape)}")

    def _stack(self, padded: torch.Tensor, count: int) -> torch.Tensor:
        """The first ``count`` windows of ``m`` rows every ``n`` of (B, rows, D), as (B, count, m * D)."""
        m, n = self.config.lfr_m, self.config.lfr_n
        if count == 0:
            return padded.new_zeros(padded.shape[0], 0, m * self.num_features)
        windows = padded.unfold(1, m, n)[:, :count]  # (B, count, D, m)
        return windows.transpose(2, 3).reshape(padded.shape[0], count, m * self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Offline: (B, T, D) -> (B, ceil(T / n), m * D)."""
        self._check(x)
        if x.shape[1] == 0:
            return self._stack(x, 0)
        c = self.config
        head = x[:, :1].expand(-1, c.left_pad, -1)
        tail = x[:, -1:].expand(-1, c.lfr_m, -1)  # enough for the last output's missing rows
        return self._stack(torch.cat([head, x, tail], dim=1), lfr_frames(x.shape[1], c.lfr_n))

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> LfrState:
        device = device or self.param_device()
        return LfrState(
            rows=torch.zeros(batch_size, self.config.lfr_m, self.num_features, device=device),
            count=torch.zeros(batch_size, dtype=torch.long, device=device),
            seen=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def phase(self, state: LfrState) -> torch.Tensor:
        """(B,) int64: rows with equal values stack the same outputs from equal inputs."""
        return state.count * 2 + (state.seen == 0).long()

    def batch_key(self, state: LfrState, row: int) -> int:
        return int(self.phase(state)[row])

    def step(self, x: torch.Tensor, state: LfrState) -> torch.Tensor:
        """(B, t, D) frames -> (B, k, m * D): every output whose ``m`` rows are all here."""
        self._check(x)
        uniform_count(self.phase(state), "LFR phases")
        seen, count = int(state.seen[0]), int(state.count[0])  # row 0 stands for the shared phase
        if x.shape[1] == 0:
            return self._stack(x, 0)
        c = self.config
        frames = x.shape[1]
        if seen == 0:
            x = torch.cat([x[:, :1].expand(-1, c.left_pad, -1), x], dim=1)
        padded = torch.cat([state.rows[:, :count], x], dim=1)
        ready = frames_in(padded.shape[1], c.lfr_m, c.lfr_n)
        out = self._stack(padded, ready)
        rest = padded[:, ready * c.lfr_n :]
        state.rows[:, : rest.shape[1]].copy_(rest)
        state.count.fill_(rest.shape[1])
        state.seen.add_(frames)
        return out

    def flush(self, state: LfrState) -> torch.Tensor:
        """(B, k, m * D): the outputs whose windows run past the last frame, padded with copies of it."""
        seen = uniform_count(state.seen, "LFR positions")
        count = int(state.count[0])  # follows from `seen`, so the rows agree
        c = self.config
        emitted = frames_in(seen + c.left_pad, c.lfr_m, c.lfr_n) if seen else 0
        remaining = lfr_frames(seen, c.lfr_n) - emitted
        held = state.rows[:, :count]
        if remaining <= 0:
            return self._stack(held, 0)
        # Every remaining output starts inside the held rows, so the last of them is the last frame.
        padded = torch.cat([held, held[:, -1:].expand(-1, c.lfr_m, -1)], dim=1)
        return self._stack(padded, remaining)


def load_am_mvn(path: str | PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a Kaldi-nnet ``am.mvn``: the ``<AddShift>`` and ``<Rescale>`` vectors, each (D,) float32.

    The file is ``<Nnet> <Splice> ... <AddShift> D D <LearnRateCoef> 0 [ v1 ... vD ]
    <Rescale> D D <LearnRateCoef> 0 [ ... ] </Nnet>``; brackets may span lines.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    vectors = {}
    for name in ("AddShift", "Rescale"):
        match = re.search(rf"<{name}>\s+(\d+)\s+(\d+)[^\[]*\[([^\]]*)\]", text)
        if match is None:
            raise ValueError(f"{path}: no <{name}> block with a [ ... ] vector")
        values = torch.tensor([float(v) for v in match.group(3).split()], dtype=torch.float32)
        if values.numel() != int(match.group(2)):
            raise ValueError(f"{path}: <{name}> declares {match.group(2)} values, has {values.numel()}")
        vectors[name] = values
    shift, scale = vectors["AddShift"], vectors["Rescale"]
    if shift.shape != scale.shape:
        raise ValueError(f"{path}: <AddShift> has {shift.numel()} values, <Rescale> {scale.numel()}")
    return shift, scale


class Cmvn(nn.Module):
    """Global mean and variance normalisation: (B, T, D) -> ``(x + shift) * scale``, stateless."""

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("shift", shift.to(torch.float32))
        self.register_buffer("scale", scale.to(torch.float32))

    @classmethod
    def from_am_mvn(cls, path: str | PathLike) -> "Cmvn":
        return cls(*load_am_mvn(path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        if dim > self.shift.numel():
            raise ValueError(f"CMVN has {self.shift.numel()} features, input {dim}")
        # FunASR applies the first `dim` entries when the file is wider than the features.
        return (x + self.shift[:dim]) * self.scale[:dim]
