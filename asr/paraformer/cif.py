"""Continuous integrate-and-fire (CIF), batched: no loop over frames or streams.

FunASR's loop (threshold 1): accumulate ``alpha[t]``; when the sum reaches 1, the
frame fires a token whose embedding is the alpha-weighted sum of the frames
since the last fire, the crossing frame split between the two tokens. With
``c`` the running sum of alphas, frame t covers the interval
``[c[t-1], c[t])`` and gives token k the weight of its overlap with
``[k, k+1)``. Alphas are at most 1, so a frame touches at most two tokens:
two ``scatter_add`` calls compute every token of every row at once; token k
is complete when ``c[T-1] >= k + 1``. Prefix sums run in float64 (as FunASR's
vectorised ``cif_v1``) so long utterances do not drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from legato.asr.paraformer.config import ParaformerConfig


@dataclass(frozen=True)
class CifOutput:
    embeds: torch.Tensor  # (B, N, d): complete tokens, rows right-padded with zeros
    counts: torch.Tensor  # (B,) complete tokens per row
    residual_alpha: torch.Tensor  # (B,) weight integrated after the last fire
    residual_frame: torch.Tensor  # (B, d) the unnormalised partial token


def integrate_and_fire(alphas: torch.Tensor, hidden: torch.Tensor) -> CifOutput:
    """alphas (B, T) in [0, 1], hidden (B, T, d) -> the fired tokens and what is left over."""
    b, t, d = hidden.shape
    c = alphas.to(torch.float64).cumsum(1)
    prev = c - alphas.to(torch.float64)
    k0 = prev.floor()
    w_first = (torch.minimum(c, k0 + 1) - prev).to(hidden.dtype)
    w_next = (c - (k0 + 1)).clamp(min=0).to(hidden.dtype)
    counts = c[:, -1].floor().long() if t else torch.zeros(b, dtype=torch.long, device=hidden.device)
    n = int(counts.max()) if b else 0
    slots = torch.zeros(b, n + 2, d, dtype=hidden.dtype, device=hidden.device)
    idx = k0.long().clamp(max=n)
    slots.scatter_add_(1, idx[..., None].expand(b, t, d), w_first[..., None] * hidden)
    slots.scatter_add_(1, (idx + 1).clamp(max=n + 1)[..., None].expand(b, t, d), w_next[..., None] * hidden)
    keep = torch.arange(n, device=hidden.device)[None] < counts[:, None]
    residual = (c[:, -1] - counts).to(hidden.dtype) if t else torch.zeros(b, dtype=hidden.dtype, device=hidden.device)
    return CifOutput(slots[:, :n] * keep[..., None], counts, residual, slots[torch.arange(b), counts])


class CifPredictor(nn.Module):
    """FunASR's ``CifPredictorV2``: alphas from the encoder output (conv k=3 -> relu -> linear -> sigmoid)."""

    def __init__(self, cfg: ParaformerConfig):
        super().__init__()
        self.cif_conv1d = nn.Conv1d(cfg.d_model, cfg.d_model, 3)
        self.cif_output = nn.Linear(cfg.d_model, 1)
        self.tail = cfg.cif_tail

    def alphas(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, T); the window is zero-padded one frame at each end."""
        z = torch.relu(self.cif_conv1d(F.pad(hidden.transpose(1, 2), (1, 1)))).transpose(1, 2)
        return torch.relu(torch.sigmoid(self.cif_output(z)[..., 0]))

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> tuple[CifOutput, torch.Tensor]:
        """Offline: (B, T, d) with padded frames zeroed -> fired tokens (the tail weight added at each row's end
        so a last token at least 1 - tail complete fires) and the alphas (B, T + 1) with the tail."""
        b, t, _ = hidden.shape
        mask = torch.arange(t, device=hidden.device)[None] < lengths[:, None]
        alphas = F.pad(self.alphas(hidden) * mask, (0, 1))
        alphas[torch.arange(b), lengths] = self.tail
        return integrate_and_fire(alphas, F.pad(hidden, (0, 0, 0, 1))), alphas
