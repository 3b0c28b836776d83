"""BigVGAN's anti-aliased SnakeBeta activation (``Activation1d``), as XCodec2's acoustic encoder uses it.

Per channel: upsample x2 (replicate-pad 5 frames each side, transposed conv of stride 2 with the stored 12-tap
Kaiser-windowed sinc filter times 2, crop 15 each side), SnakeBeta ``x + sin(x e^alpha)^2 / (e^beta + 1e-9)``
(``alpha``/``beta`` stored in log scale; beta under the key ``bias``), then low-pass and downsample x2
(replicate-pad 5 left / 6 right, stride-2 conv with the stored filter). The filters are checkpoint buffers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

RATIO = 2
TAPS = 12
UP_PAD = TAPS // RATIO - 1  # 5
UP_CROP = UP_PAD * RATIO + (TAPS - RATIO) // 2  # 15 (both sides for an even filter)
DOWN_PAD_LEFT, DOWN_PAD_RIGHT = TAPS // 2 - 1, TAPS // 2  # 5, 6
SNAKE_EPS = 1e-9


class SnakeBeta(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))  # beta, log scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.alpha.exp()[:, None], self.bias.exp()[:, None]
        return x + 1.0 / (beta + SNAKE_EPS) * torch.sin(x * alpha).pow(2)


class UpSample(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("filter", torch.zeros(1, 1, TAPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.conv_transpose1d(F.pad(x, (UP_PAD, UP_PAD), mode="replicate"), self.filter.expand(c, -1, -1), stride=RATIO, groups=c)
        return RATIO * x[..., UP_CROP:-UP_CROP]


class LowPass(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("filter", torch.zeros(1, 1, TAPS))


class DownSample(nn.Module):
    def __init__(self):
        super().__init__()
        self.lowpass = LowPass()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (DOWN_PAD_LEFT, DOWN_PAD_RIGHT), mode="replicate")
        return F.conv1d(x, self.lowpass.filter.expand(c, -1, -1), stride=RATIO, groups=c)


class Activation1d(nn.Module):
    """(B, C, T) -> (B, C, T). Keys: ``act.alpha``, ``act.bias``, ``upsample.filter``, ``downsample.lowpass.filter``."""

    def __init__(self, channels: int):
        super().__init__()
        self.act, self.upsample, self.downsample = SnakeBeta(channels), UpSample(), DownSample()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))
