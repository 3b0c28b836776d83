"""VITS's text encoder: phoneme ids -> hidden states and the prior's mean and log-scale per phoneme.

A post-norm transformer whose self-attention adds relative-position terms within +-``window``
positions (Shaw et al.): the score of query i on key j gains ``q_i . K_rel[j - i]`` and the output
gains ``sum_j p_ij V_rel[j - i]``, both zero beyond the window. The reference builds those terms
with pad-and-reshape tricks over 2T - 1 relative positions; here they are gathers over the
2 * window + 1 learned embeddings, the same numbers without the T x 2T intermediate.

Padded batches: keys past a row's length are masked with -1e4 (the reference's fill, which
``softmax`` turns into an exact 0 in float32) and the FFN's convs read zeros there, so each row
equals the row run alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import VitsConfig


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, T); parameters ``gamma``/``beta`` as the reference names them."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.transpose(1, 2), self.gamma.shape, self.gamma, self.beta, self.eps).transpose(1, 2)


class RelativeIndex:
    """The gathers of relative attention for T positions and a window w, the same for every layer: made once a call.

    ``scores`` (T, T): key j of query i reads relative column j - i + w, or 2w + 1 (a zero column) beyond the window;
    ``cols`` (T, 2w + 1): the key at relative position r of query i, i + r - w, clamped; ``valid``: whether it exists.
    """

    def __init__(self, t: int, w: int, device: torch.device):
        offset = torch.arange(t, device=device)[None, :] - torch.arange(t, device=device)[:, None]  # j - i
        self.scores = torch.where(offset.abs() <= w, offset + w, 2 * w + 1)
        cols = torch.arange(t, device=device)[:, None] + torch.arange(-w, w + 1, device=device)[None, :]
        self.valid = (cols >= 0) & (cols < t)
        self.cols = cols.clamp(0, t - 1)


class RelativeSelfAttention(nn.Module):
    def __init__(self, channels: int, n_heads: int, window: int):
        super().__init__()
        self.n_heads, self.window, self.d_head = n_heads, window, channels // n_heads
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        # Shared by all heads (the reference's heads_share=True).
        self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * window + 1, self.d_head))
        self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * window + 1, self.d_head))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, rel: "RelativeIndex") -> torch.Tensor:
        """x (B, C, T), key_mask (B, 1, 1, T) bool, the window's gather indices for T -> (B, C, T)."""
        b, c, t = x.shape
        heads = lambda y: y.view(b, self.n_heads, self.d_head, t).transpose(2, 3)  # (B, H, T, D)
        q = heads(self.conv_q(x)) / math.sqrt(self.d_head)
        k, v = heads(self.conv_k(x)), heads(self.conv_v(x))
        w = self.window
        rel_index, cols, valid = rel.scores, rel.cols, rel.valid

        rel_logits = q @ self.emb_rel_k[0].transpose(0, 1)  # (B, H, T, 2w + 1)
        rel_logits = F.pad(rel_logits, (0, 1))
        scores = q @ k.transpose(2, 3) + rel_logits.gather(3, rel_index.expand(b, self.n_heads, t, t))
        scores = scores.masked_fill(~key_mask, -1e4)
        p = F.softmax(scores, dim=-1)
        out = p @ v
        # p's weight at each relative position r = j - i + w (0 where j falls outside the sequence)
        rel_p = p.gather(3, cols.expand(b, self.n_heads, t, 2 * w + 1)) * valid
        out = out + rel_p @ self.emb_rel_v[0]
        return self.conv_o(out.transpose(2, 3).reshape(b, c, t))


class FeedForward(nn.Module):
    def __init__(self, channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)  # the reference's "same" padding

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(F.pad(x * mask, self.pad)))
        return self.conv_2(F.pad(x * mask, self.pad)) * mask


class Encoder(nn.Module):
    def __init__(self, cfg: VitsConfig):
        super().__init__()
        h = cfg.hidden_channels
        self.attn_layers = nn.ModuleList(RelativeSelfAttention(h, cfg.n_heads, cfg.window_size) for _ in range(cfg.n_layers))
        self.norm_layers_1 = nn.ModuleList(ChannelNorm(h) for _ in range(cfg.n_layers))
        self.ffn_layers = nn.ModuleList(FeedForward(h, cfg.filter_channels, cfg.kernel_size) for _ in range(cfg.n_layers))
        self.norm_layers_2 = nn.ModuleList(ChannelNorm(h) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        key_mask = mask.bool().unsqueeze(1)  # (B, 1, 1, T)
        rel = RelativeIndex(x.shape[2], self.attn_layers[0].window, x.device)
        x = x * mask
        for attn, norm1, ffn, norm2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = norm1(x + attn(x, key_mask, rel))
            x = norm2(x + ffn(x, mask))
        return x * mask


class TextEncoder(nn.Module):
    def __init__(self, cfg: VitsConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.n_vocab, cfg.hidden_channels)
        self.encoder = Encoder(cfg)
        self.proj = nn.Conv1d(cfg.hidden_channels, 2 * cfg.inter_channels, 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (B, T) long, lengths (B,) -> hidden (B, H, T), prior mean and log-scale (B, C, T) each, mask (B, 1, T)."""
        x = (self.emb(ids) * math.sqrt(self.cfg.hidden_channels)).transpose(1, 2)
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * mask, mask)
        m, logs = (self.proj(x) * mask).split(self.cfg.inter_channels, dim=1)
        return x, m, logs, mask
