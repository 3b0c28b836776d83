"""VITS's duration predictors, inference direction only: hidden states -> log-durations per phoneme.

- :class:`DurationPredictor` (deterministic): two kernel-3 convs with ReLU and channel norm, then a
  projection.
- :class:`StochasticDurationPredictor`: noise ``e ~ N(0, noise_w^2)`` of shape (B, 2, T) is pushed
  backwards through the flows; channel 0 is then the log-duration. The reference's flow list is
  ``[Affine, ConvFlow_1, Flip, ..., ConvFlow_n, Flip]``; reversed, it drops the second-to-last entry,
  ConvFlow_1 (its "useless vflow"), so inference runs ``Flip, ConvFlow_n, ..., Flip, ConvFlow_2, Flip,
  Affine``. A :class:`ConvFlow` is a monotonic rational-quadratic spline on channel 1 whose knots come
  from dilated depth-separable convs over channel 0 and the condition. ConvFlow_1 and the posterior
  flows (training only) are not built; Piper's ONNX export leaves them out too.

The noise is drawn by the caller (per request, from its own generator) so a seed reproduces and a
row's draws do not depend on the batch it ran in.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import VitsConfig
from .text_encoder import ChannelNorm

MIN_BIN = 1e-3  # the reference's minimum bin width, height and knot derivative


class DurationPredictor(nn.Module):
    def __init__(self, cfg: VitsConfig):
        super().__init__()
        h, f, k = cfg.hidden_channels, cfg.dp_filter_channels, cfg.dp_kernel_size
        self.conv_1 = nn.Conv1d(h, f, k, padding=k // 2)
        self.norm_1 = ChannelNorm(f)
        self.conv_2 = nn.Conv1d(f, f, k, padding=k // 2)
        self.norm_2 = ChannelNorm(f)
        self.proj = nn.Conv1d(f, 1, 1)
        if cfg.gin_channels:
            self.cond = nn.Conv1d(cfg.gin_channels, h, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, H, T), mask (B, 1, T) -> log-durations (B, 1, T)."""
        if g is not None:
            x = x + self.cond(g)
        x = self.norm_1(torch.relu(self.conv_1(x * mask)))
        x = self.norm_2(torch.relu(self.conv_2(x * mask)))
        return self.proj(x * mask) * mask


class DDSConv(nn.Module):
    """Dilated depth-separable convs (dilation kernel**i), each followed by norm, GELU, 1x1, norm, GELU; residual."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int):
        super().__init__()
        self.convs_sep = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, groups=channels, dilation=kernel_size**i,
                      padding=(kernel_size * kernel_size**i - kernel_size**i) // 2)
            for i in range(n_layers)
        )
        self.convs_1x1 = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in range(n_layers))
        self.norms_1 = nn.ModuleList(ChannelNorm(channels) for _ in range(n_layers))
        self.norms_2 = nn.ModuleList(ChannelNorm(channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        if g is not None:
            x = x + g
        for sep, one, n1, n2 in zip(self.convs_sep, self.convs_1x1, self.norms_1, self.norms_2):
            y = F.gelu(n1(sep(x * mask)))
            x = x + F.gelu(n2(one(y)))
        return x * mask


class ConvFlow(nn.Module):
    """Channel 1 through a rational-quadratic spline conditioned on channel 0 and ``g``; reverse only."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int, bins: int, tail_bound: float):
        super().__init__()
        self.filter_channels, self.bins, self.tail_bound = channels, bins, tail_bound
        self.pre = nn.Conv1d(1, channels, 1)
        self.convs = DDSConv(channels, kernel_size, n_layers)
        self.proj = nn.Conv1d(channels, 3 * bins - 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[:, :1], x[:, 1:]
        h = self.proj(self.convs(self.pre(x0), mask, g)) * mask  # (B, 3 bins - 1, T)
        h = h.unsqueeze(1).permute(0, 1, 3, 2)  # (B, 1, T, 3 bins - 1)
        scale = math.sqrt(self.filter_channels)
        x1 = inverse_spline(x1, h[..., : self.bins] / scale, h[..., self.bins : 2 * self.bins] / scale, h[..., 2 * self.bins :], self.tail_bound)
        return torch.cat([x0, x1], 1) * mask


def inverse_spline(y: torch.Tensor, widths: torch.Tensor, heights: torch.Tensor, derivs: torch.Tensor, bound: float) -> torch.Tensor:
    """The inverse of a monotonic rational-quadratic spline on [-bound, bound], identity outside (linear tails).

    y (...), widths/heights (..., K) unnormalised, derivs (..., K - 1) unnormalised interior knot slopes.
    Solves the bin's quadratic for theta (Durkan et al., 2019, eq. 29) with the reference's stable root.
    Loop-free over all elements: outside values are computed on a clamped copy and replaced.
    """
    k = widths.shape[-1]
    inside = (y >= -bound) & (y <= bound)
    edge = float(np.log(np.exp(1 - MIN_BIN) - 1))  # the tails' slope 1 after softplus + MIN_BIN
    derivs = F.pad(derivs, (1, 1), value=edge)
    derivs = MIN_BIN + F.softplus(derivs)

    def knots(unnormalised: torch.Tensor) -> torch.Tensor:
        size = MIN_BIN + (1 - MIN_BIN * k) * F.softmax(unnormalised, dim=-1)
        cum = F.pad(torch.cumsum(size, dim=-1), (1, 0)) * (2 * bound) - bound
        cum[..., 0], cum[..., -1] = -bound, bound
        return cum

    cumw, cumh = knots(widths), knots(heights)
    w, h = cumw[..., 1:] - cumw[..., :-1], cumh[..., 1:] - cumh[..., :-1]
    yc = y.clamp(-bound, bound)
    search = cumh.clone()
    search[..., -1] += 1e-6  # the reference's searchsorted: the top value falls in the last bin
    idx = ((yc[..., None] >= search).sum(-1) - 1).clamp(0, k - 1)[..., None]
    pick = lambda t: t.gather(-1, idx)[..., 0]
    delta = h / w
    in_cw, in_w, in_ch, in_h, in_delta = pick(cumw), pick(w), pick(cumh), pick(h), pick(delta)
    d0, d1 = pick(derivs[..., :-1]), pick(derivs[..., 1:])
    dy = yc - in_ch
    a = dy * (d0 + d1 - 2 * in_delta) + in_h * (in_delta - d0)
    b = in_h * d0 - dy * (d0 + d1 - 2 * in_delta)
    c = -in_delta * dy
    root = (2 * c) / (-b - torch.sqrt(b * b - 4 * a * c))
    return torch.where(inside, root * in_w + in_cw, y)


class ElementwiseAffine(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(channels, 1))
        self.logs = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x - self.m) * torch.exp(-self.logs) * mask


class StochasticDurationPredictor(nn.Module):
    def __init__(self, cfg: VitsConfig):
        super().__init__()
        h = cfg.hidden_channels  # the reference's filter_channels = in_channels
        self.pre = nn.Conv1d(h, h, 1)
        self.convs = DDSConv(h, cfg.dp_kernel_size, cfg.sdp_conv_layers)
        self.proj = nn.Conv1d(h, h, 1)
        if cfg.gin_channels:
            self.cond = nn.Conv1d(cfg.gin_channels, h, 1)
        self.affine = ElementwiseAffine(2)
        # The reference's flows 3, 5, ..., 2n - 1 (ConvFlow_2 .. ConvFlow_n), in that order.
        self.conv_flows = nn.ModuleList(
            ConvFlow(h, cfg.dp_kernel_size, cfg.sdp_conv_layers, cfg.spline_bins, cfg.spline_tail_bound) for _ in range(cfg.sdp_flows - 1)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, H, T), mask (B, 1, T), noise (B, 2, T) already scaled by noise_w -> log-durations (B, 1, T)."""
        x = self.pre(x)
        if g is not None:
            x = x + self.cond(g)
        x = self.proj(self.convs(x, mask)) * mask
        z = noise
        for flow in reversed(self.conv_flows):
            z = flow(z.flip(1), mask, x)
        return self.affine(z.flip(1), mask)[:, :1]
