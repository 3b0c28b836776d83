"""SANM: self-attention with an FSMN memory block (FunASR's ``MultiHeadedAttentionSANM``), and the encoder.

Module names follow FunASR's state-dict keys (``encoder.encoders0.0.self_attn.linear_q_k_v``, ...), so a
``model.pt`` loads as is. The encoder runs offline (padded batch + lengths) or chunk by chunk over explicit
caches (``chunk``); the per-stream cache layout lives in ``streaming.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from legato.asr.paraformer.config import LN_EPS, ParaformerConfig

PE_TIMESCALE = 10000.0


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """FunASR's SinusoidalPositionEncoder at 1-based ``positions`` (B, T) -> (B, T, dim): all sines, then all cosines.

    Computed in float32 exactly as FunASR does (its rounding at large positions included)."""
    inc = torch.log(torch.tensor([PE_TIMESCALE], device=positions.device)) / (dim / 2 - 1)
    inv = torch.exp(torch.arange(dim // 2, device=positions.device, dtype=torch.float32) * -inc)
    t = positions.to(torch.float32)[..., None] * inv
    return torch.cat([torch.sin(t), torch.cos(t)], dim=-1)


def fsmn_memory(conv: nn.Conv1d, v: torch.Tensor, shift: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, d) -> (B, T, d): depthwise conv over time (zero-padded at the edges, moved ``shift`` frames to the
    past) plus the input; padded frames (mask False) are zero in and out."""
    if mask is not None:
        v = v * mask[..., None]
    k = conv.kernel_size[0]
    left = (k - 1) // 2 + shift
    c = F.conv1d(F.pad(v.transpose(1, 2), (left, k - 1 - left)), conv.weight, groups=conv.groups).transpose(1, 2)
    out = c + v
    return out * mask[..., None] if mask is not None else out


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, H, Tq, dh) x (B, H, Tk, dh) -> (B, Tq, H*dh); ``key_mask`` (B, Tk) True = attend. Masked keys get
    exactly zero weight (FunASR fills -inf and zeroes the softmax there)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1).masked_fill(~key_mask[:, None, None, :], 0.0)
    else:
        weights = torch.softmax(scores, dim=-1)
    out = weights @ v
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, n, d // n).transpose(1, 2)


class SanmAttention(nn.Module):
    def __init__(self, in_size: int, cfg: ParaformerConfig):
        super().__init__()
        d = cfg.d_model
        self.heads, self.shift = cfg.heads, cfg.encoder_shift
        self.linear_q_k_v = nn.Linear(in_size, 3 * d)
        self.linear_out = nn.Linear(d, d)
        self.fsmn_block = nn.Conv1d(d, d, cfg.encoder_kernel, groups=d, bias=False)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.linear_q_k_v(x).chunk(3, dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        memory = fsmn_memory(self.fsmn_block, v, self.shift, mask)
        att = attend(heads(q, self.heads), heads(k, self.heads), heads(v, self.heads), mask)
        return self.linear_out(att) + memory


class FeedForward(nn.Module):
    def __init__(self, d: int, ff: int):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, in_size: int, cfg: ParaformerConfig):
        super().__init__()
        self.residual = in_size == cfg.d_model  # the first block (560 -> d) has no attention residual
        self.norm1 = nn.LayerNorm(in_size, eps=LN_EPS)
        self.self_attn = SanmAttention(in_size, cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.feed_forward = FeedForward(cfg.d_model, cfg.encoder_ff)

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x + y if self.residual else y
        return x + self.feed_forward(self.norm2(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.finish(x, self.self_attn(self.norm1(x), mask))

    def chunk(self, x: torch.Tensor, cache_k: torch.Tensor | None, cache_v: torch.Tensor | None,
              cache_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One window (B, W, in) with cached keys/values (B, H, C, dh) (``cache_mask`` (B, C) marks the valid ones).

        The FSMN sees the window only (zero-padded at its edges); attention sees cache + window, unmasked within
        the window. Returns the output and this window's projected keys and values (B, H, W, dh)."""
        att = self.self_attn
        q, k, v = att.project(self.norm1(x))
        memory = fsmn_memory(att.fsmn_block, v, att.shift)
        qh, kh, vh = heads(q, att.heads), heads(k, att.heads), heads(v, att.heads)
        if cache_k is not None:
            keys, values = torch.cat([cache_k, kh], dim=2), torch.cat([cache_v, vh], dim=2)
            window = torch.ones(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
            out = attend(qh, keys, values, torch.cat([cache_mask, window], dim=1))
        else:
            out = attend(qh, kh, vh, None)
        return self.finish(x, att.linear_out(out) + memory), kh, vh


class SanmEncoder(nn.Module):
    def __init__(self, cfg: ParaformerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders0 = nn.ModuleList([EncoderLayer(cfg.input_size, cfg)])
        self.encoders = nn.ModuleList([EncoderLayer(cfg.d_model, cfg) for _ in range(cfg.encoder_blocks - 1)])
        self.after_norm = nn.LayerNorm(cfg.d_model, eps=LN_EPS)

    @property
    def layers(self) -> list[EncoderLayer]:
        return [*self.encoders0, *self.encoders]

    def embed(self, feats: torch.Tensor, first_position: torch.Tensor | int = 0) -> torch.Tensor:
        """Scale by sqrt(d) (the model width, not the feature width) and add positions first_position + 1 ..."""
        t = torch.arange(feats.shape[1], device=feats.device)
        start = torch.as_tensor(first_position, device=feats.device).reshape(-1, 1)
        return feats * math.sqrt(self.cfg.d_model) + sinusoid(start + t + 1, feats.shape[-1])

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, input_size), (B,) -> (B, T, d). Frames past a row's length are zeroed."""
        mask = torch.arange(feats.shape[1], device=feats.device)[None] < lengths[:, None]
        x = self.embed(feats)
        for layer in self.layers:
            x = layer(x, mask)
        return self.after_norm(x) * mask[..., None]
