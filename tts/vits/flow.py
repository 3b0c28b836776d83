"""VITS's normalising flow, run in reverse: prior sample z_p (B, C, T) -> the decoder's latent z.

``n_flows`` mean-only residual coupling layers, each followed by a channel flip. Reversed, each step
flips the channels, then shifts the second half by a WaveNet of the first: ``x1 -= post(WN(pre(x0)))``.
The WaveNet's convs are 'same'-padded (non-causal), so an output frame depends on
``VitsConfig.flow_reach`` frames on each side: that is what the streamer overlaps.

Masks zero every WaveNet layer's output past a row's end, so each conv reads zeros there, as the
row alone would read its zero padding: a padded row equals the row run alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import VitsConfig


class WaveNet(nn.Module):
    """Gated dilated convs with residual and skip outputs (the reference's ``WN``), weight norm folded."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.hidden = hidden
        self.in_layers = nn.ModuleList(
            nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=dilation_rate**i, padding=(kernel_size - 1) * dilation_rate**i // 2)
            for i in range(n_layers)
        )
        self.res_skip_layers = nn.ModuleList(
            nn.Conv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1) for i in range(n_layers)
        )
        if gin_channels:
            self.cond_layer = nn.Conv1d(gin_channels, 2 * hidden * n_layers, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.zeros_like(x)
        cond = self.cond_layer(g) if g is not None else None
        h = self.hidden
        last = len(self.in_layers) - 1
        for i, (conv, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a = conv(x)
            if cond is not None:
                a = a + cond[:, 2 * h * i : 2 * h * (i + 1)]
            acts = res_skip(torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:]))
            if i < last:
                x = (x + acts[:, :h]) * mask
                out = out + acts[:, h:]
            else:
                out = out + acts
        return out * mask


class CouplingLayer(nn.Module):
    def __init__(self, cfg: VitsConfig):
        super().__init__()
        half = cfg.inter_channels // 2
        self.half = half
        self.pre = nn.Conv1d(half, cfg.hidden_channels, 1)
        self.enc = WaveNet(cfg.hidden_channels, cfg.flow_kernel_size, cfg.flow_dilation_rate, cfg.flow_wn_layers, cfg.gin_channels)
        self.post = nn.Conv1d(cfg.hidden_channels, half, 1)  # mean only

    def reverse(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        x0, x1 = x[:, : self.half], x[:, self.half :]
        h = self.enc(self.pre(x0) * mask, mask, g)
        m = self.post(h) * mask
        return torch.cat([x0, (x1 - m) * mask], 1)


class Flow(nn.Module):
    def __init__(self, cfg: VitsConfig):
        super().__init__()
        self.flows = nn.ModuleList(CouplingLayer(cfg) for _ in range(cfg.n_flows))

    def forward(self, z_p: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """z_p (B, C, T), mask (B, 1, T) -> z (B, C, T), the inverse of the trained flow."""
        x = z_p
        for layer in reversed(self.flows):
            x = layer.reverse(x.flip(1), mask, g)
        return x
