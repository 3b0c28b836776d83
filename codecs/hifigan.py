"""HiFi-GAN generator (jik876/hifi-gan; the copy ming024/FastSpeech2 vendors): log-mel -> waveform.

The same generator is VITS's decoder (``tts/vits/``): there its input is the flow's latent instead of a
mel (``n_mels`` = the latent's channels), ``conv_post`` has no bias, and a multi-speaker voice adds
``cond(g)`` (a speaker embedding) after ``conv_pre``.

Checkpoints are ``torch.save({"generator": state_dict}, "g_NNNNNNNN")`` with weight-normed convs
(``weight_g``, ``weight_v``); :func:`load_hifigan` folds them into plain weights,
``w = g * v / ||v||`` with the norm over every dim but 0, which is what
``torch.nn.utils.remove_weight_norm`` leaves (dim 0 is out-channels for a conv, in-channels for
a transposed conv). Our module and key names are the reference's, so no key table is needed.

Streaming (:class:`HifiGanStreamer`): every layer is a 'same'-padded (non-causal) conv, so an
output sample depends on a fixed window of mel frames around its own frame. From the config we
compute that window (``mel_context``: left and right frames); the streamer keeps ``left`` frames
of context, holds back ``right`` frames of lookahead, and re-runs the generator on that window,
so its concatenated output equals :meth:`HifiGan.forward` on the whole mel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.1  # inside the network
FINAL_LRELU_SLOPE = 0.01  # the reference calls F.leaky_relu(x) with its default before conv_post
EDGE_KERNEL = 7  # conv_pre and conv_post
N_MELS = 80  # conv_pre is built for 80 mel channels in the reference


class HifiGanConfigError(ValueError):
    """A config.json value legato does not implement (the message names the field)."""

    code = "unsupported_model"


def same_padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


@dataclass(frozen=True)
class HifiGanConfig:
    """The generator's part of a jik876 config.json (V1 defaults; V2 is V1 with 128 channels)."""

    resblock: str = "1"  # "1": 3 dilated + 3 plain convs per block (V1, V2); "2": 2 dilated convs (V3)
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    n_mels: int = N_MELS  # num_mels; for a VITS decoder, the latent's channels
    sample_rate: int = 22050  # sampling_rate, Hz
    hop_length: int = 256  # hop_size: samples per mel frame
    post_bias: bool = True  # VITS's conv_post has none
    gin_channels: int = 0  # speaker conditioning (VITS multi-speaker): cond(g) added after conv_pre

    def __post_init__(self) -> None:
        if self.resblock not in ("1", "2"):
            raise HifiGanConfigError(f"resblock = {self.resblock!r} is not supported (use '1' or '2')")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes) or not self.upsample_rates:
            raise HifiGanConfigError(
                f"upsample_rates {list(self.upsample_rates)} and upsample_kernel_sizes {list(self.upsample_kernel_sizes)}"
                " must be non-empty and of equal length"
            )
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if u < 1 or k < u or (k - u) % 2:
                raise HifiGanConfigError(
                    f"upsample_kernel_sizes {k} with upsample_rates {u}: need kernel >= rate and an even difference"
                    " (else the output is not frames * hop long)"
                )
        if math.prod(self.upsample_rates) != self.hop_length:
            raise HifiGanConfigError(
                f"upsample_rates {list(self.upsample_rates)} multiply to {math.prod(self.upsample_rates)}, not hop_size {self.hop_length}"
            )
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise HifiGanConfigError(f"upsample_initial_channel {self.upsample_initial_channel} must be divisible by 2**{len(self.upsample_rates)}")
        n_dil = 3 if self.resblock == "1" else 2
        if len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes) or any(len(d) != n_dil for d in self.resblock_dilation_sizes):
            raise HifiGanConfigError(
                f"resblock_dilation_sizes {[list(d) for d in self.resblock_dilation_sizes]}: need one list of {n_dil}"
                f" dilations per resblock kernel for resblock {self.resblock!r}"
            )
        if any(k % 2 == 0 for k in self.resblock_kernel_sizes):
            raise HifiGanConfigError(f"resblock_kernel_sizes {list(self.resblock_kernel_sizes)} must be odd")

    @classmethod
    def from_dict(cls, h: Mapping[str, Any]) -> HifiGanConfig:
        if int(h.get("num_mels", N_MELS)) != N_MELS:
            raise HifiGanConfigError(f"num_mels must be {N_MELS} (the reference generator's first conv is built for it), got {h['num_mels']}")
        try:
            return cls(
                resblock=str(h["resblock"]),
                upsample_rates=tuple(int(u) for u in h["upsample_rates"]),
                upsample_kernel_sizes=tuple(int(k) for k in h["upsample_kernel_sizes"]),
                upsample_initial_channel=int(h["upsample_initial_channel"]),
                resblock_kernel_sizes=tuple(int(k) for k in h["resblock_kernel_sizes"]),
                resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in h["resblock_dilation_sizes"]),
                n_mels=int(h.get("num_mels", N_MELS)),
                sample_rate=int(h.get("sampling_rate", 22050)),
                hop_length=int(h.get("hop_size", math.prod(int(u) for u in h["upsample_rates"]))),
            )
        except KeyError as exc:
            raise HifiGanConfigError(f"config.json: missing {exc.args[0]}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> HifiGanConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise HifiGanConfigError(f"{path}: cannot read: {exc}") from None

    def resblock_reach(self, kernel: int, dilations: tuple[int, ...]) -> int:
        """Samples one residual block reads on each side of its output sample."""
        if self.resblock == "1":
            return sum(same_padding(kernel, d) + same_padding(kernel) for d in dilations)
        return sum(same_padding(kernel, d) for d in dilations)

    @property
    def mel_context(self) -> tuple[int, int]:
        """(left, right) mel frames an output sample depends on, around the frame it belongs to.

        Found by walking each of one frame's ``hop_length`` samples back through the layers as an
        interval of positions: a conv widens it by its padding on each side, a transposed conv
        (stride u, kernel k, padding p) maps output m to inputs ceil((m+p-k+1)/u) .. floor((m+p)/u).
        """
        reach = [max(self.resblock_reach(k, d) for k, d in zip(self.resblock_kernel_sizes, self.resblock_dilation_sizes))] * len(self.upsample_rates)
        left = right = 0
        pad_edge = same_padding(EDGE_KERNEL)
        for n in range(self.hop_length):
            lo, hi = n - pad_edge, n + pad_edge  # conv_post
            for i in reversed(range(len(self.upsample_rates))):
                u, k = self.upsample_rates[i], self.upsample_kernel_sizes[i]
                p = (k - u) // 2
                lo, hi = lo - reach[i], hi + reach[i]
                lo, hi = -((-(lo + p - k + 1)) // u), (hi + p) // u
            lo, hi = lo - pad_edge, hi + pad_edge  # conv_pre
            left, right = max(left, -lo), max(right, hi)
        return left, right

    @property
    def lookahead_ms(self) -> float:
        """Mel frames held back before a frame's audio is final, in ms."""
        return 1000.0 * self.mel_context[1] * self.hop_length / self.sample_rate


class ResBlock(nn.Module):
    """Type "1": x += c2(lrelu(c1(lrelu(x)))) per dilation; type "2": x += c(lrelu(x)) per dilation."""

    def __init__(self, kind: str, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()

        def conv(d: int) -> nn.Conv1d:
            return nn.Conv1d(channels, channels, kernel, dilation=d, padding=same_padding(kernel, d))

        if kind == "1":
            self.convs1 = nn.ModuleList([conv(d) for d in dilations])
            self.convs2 = nn.ModuleList([conv(1) for _ in dilations])
        else:
            self.convs = nn.ModuleList([conv(d) for d in dilations])
        self.kind = kind

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` zeroes each conv's input past a row's end, so a padded row equals itself alone."""
        m = (lambda t: t) if mask is None else (lambda t: t * mask)
        if self.kind == "1":
            for c1, c2 in zip(self.convs1, self.convs2):
                x = run_conv(c2, m(F.leaky_relu(run_conv(c1, m(F.leaky_relu(x, LRELU_SLOPE))), LRELU_SLOPE))).add_(x)
        else:
            for c in self.convs:
                x = run_conv(c, m(F.leaky_relu(x, LRELU_SLOPE))).add_(x)
        return m(x)


def run_conv(conv: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` on (B, C, T), or on (B, C, 1, T) in channels-last layout as its 2-D twin.

    On the CPU, oneDNN runs these 1-D convs 2.5-6x faster as 2-D channels-last convs than as 1-D ones, which it
    reorders to a blocked layout and back on every call (measured on the dev machine: 32 channels x 44,288
    samples, kernel 7, dilation 12: 14.5 ms as conv1d, 3.6 ms as conv2d; docs/PERFORMANCE.md).
    """
    if x.dim() == 3:
        return conv(x)
    w = conv.weight.unsqueeze(2)
    if isinstance(conv, nn.ConvTranspose1d):
        return F.conv_transpose2d(x, w, conv.bias, stride=(1, conv.stride[0]), padding=(0, conv.padding[0]))
    return F.conv2d(x, w, conv.bias, stride=(1, conv.stride[0]), padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]))


class HifiGan(nn.Module):
    def __init__(self, cfg: HifiGanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.n_mels, ch, EDGE_KERNEL, padding=same_padding(EDGE_KERNEL))
        self.ups = nn.ModuleList(
            [
                nn.ConvTranspose1d(ch // 2**i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2)
                for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
            ]
        )
        # Stage i's blocks are resblocks[i * n_kernels : (i + 1) * n_kernels] (the reference's flat list).
        self.resblocks = nn.ModuleList(
            [
                ResBlock(cfg.resblock, ch // 2 ** (i + 1), k, d)
                for i in range(len(self.ups))
                for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
            ]
        )
        self.conv_post = nn.Conv1d(ch // 2 ** len(self.ups), 1, EDGE_KERNEL, padding=same_padding(EDGE_KERNEL), bias=cfg.post_bias)
        if cfg.gin_channels:
            self.cond = nn.Conv1d(cfg.gin_channels, ch, 1)

    @torch.no_grad()
    def forward(self, mel: torch.Tensor, g: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """mel (B, n_mels, T) natural-log mel (or VITS latent) -> wav (B, T * hop_length) in [-1, 1].

        ``g`` (B, gin_channels, 1): speaker conditioning. ``lengths`` (B,) frames: rows of a padded batch;
        every conv's input is zeroed past a row's end (its zero padding alone), so each row's first
        ``lengths * hop_length`` samples equal the row run alone. On the CPU the layers run as 2-D
        channels-last convs (:func:`run_conv`).
        """
        nk = len(self.cfg.resblock_kernel_sizes)
        planar = mel.device.type == "cpu"
        x = mel.unsqueeze(2).contiguous(memory_format=torch.channels_last) if planar else mel
        mask = None if lengths is None else _frame_mask(lengths, mel.shape[2], 1, planar)
        x = run_conv(self.conv_pre, x if mask is None else x * mask)
        if g is not None:
            cond = self.cond(g)
            x = x + (cond.unsqueeze(-1) if planar else cond)
        scale = 1
        for i, up in enumerate(self.ups):
            x = F.leaky_relu(x, LRELU_SLOPE, inplace=True)  # x is this forward's own tensor from here on
            x = run_conv(up, x if mask is None else x * mask)
            if lengths is not None:
                scale *= self.cfg.upsample_rates[i]
                mask = _frame_mask(lengths, mel.shape[2], scale, planar)
            xs = self.resblocks[i * nk](x, mask)
            for j in range(1, nk):
                xs = xs.add_(self.resblocks[i * nk + j](x, mask))  # xs is a block's fresh output
            x = xs.div_(nk)
        wav = torch.tanh_(run_conv(self.conv_post, F.leaky_relu(x, FINAL_LRELU_SLOPE, inplace=True)))
        return wav.reshape(wav.shape[0], wav.shape[-1])


def _frame_mask(lengths: torch.Tensor, frames: int, scale: int, planar: bool) -> torch.Tensor:
    """(B, 1, frames * scale) float (with a unit axis before the last when ``planar``): 1 inside each row's ``lengths * scale``."""
    pos = torch.arange(frames * scale, device=lengths.device)
    mask = (pos[None, :] < (lengths[:, None] * scale)).unsqueeze(1).float()
    return mask.unsqueeze(2) if planar else mask


# (g suffix, v suffix) of torch.nn.utils.weight_norm and of its parametrizations successor.
WEIGHT_NORM_KEYS = (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1"))


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``X.weight_g``/``X.weight_v`` (or ``X.parametrizations.weight.original0/1``) -> ``X.weight``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for g_name, v_name in WEIGHT_NORM_KEYS:
            if key == v_name or key.endswith("." + v_name):
                break
            if key == g_name or key.endswith("." + g_name):
                base = key[: -len(g_name)]  # "" or "conv_pre."
                v = state[base + v_name].float()
                norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
                out[base + "weight"] = v * (value.float() / norm)
                break
        else:
            out[key] = value.float()
    return out


def load_hifigan(checkpoint: str | Path, config_json: str | Path, device: str | torch.device = "cpu") -> HifiGan:
    """Generator in eval mode from a jik876-format checkpoint (``{"generator": state_dict}``) and its config.json."""
    cfg = HifiGanConfig.from_json(config_json)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = fold_weight_norm(ckpt["generator"] if "generator" in ckpt else ckpt)
    model = HifiGan(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise HifiGanConfigError(f"{checkpoint}: generator weights do not fit {config_json}: {exc}") from None
    return model.to(device).eval()


class HifiGanStreamer:
    """Mel chunks in, waveform out as soon as it is final; equal to ``model(whole_mel)`` when concatenated.

    One utterance, or a batch of utterances fed in lockstep (same chunk lengths). A frame's
    audio is emitted once ``right`` later frames have arrived (``cfg.mel_context``); each step
    runs the generator on [first unemitted frame - left, newest frame]. ``flush`` ends the
    utterance and emits the rest (the reference's zero padding past the last frame applies).
    """

    def __init__(self, model: HifiGan) -> None:
        self.model = model
        self.left, self.right = model.cfg.mel_context
        self.hop = model.cfg.hop_length
        self.buffer: torch.Tensor | None = None  # (B, n_mels, frames) from frame ``buffer_start``
        self.buffer_start = 0
        self.received = 0  # frames pushed
        self.emitted = 0  # frames whose audio has been returned
        self.finished = False

    @property
    def pending_frames(self) -> int:
        """Frames received whose audio is not out yet (at most ``right`` after a push)."""
        return self.received - self.emitted

    def push(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, t) -> wav (B, n * hop_length) for the n frames that became final (n may be 0)."""
        if self.finished:
            raise RuntimeError("push after flush: start a new HifiGanStreamer per utterance")
        self.buffer = mel if self.buffer is None else torch.cat([self.buffer, mel], dim=2)
        self.received += mel.shape[2]
        return self._emit(max(self.emitted, self.received - self.right))

    def flush(self) -> torch.Tensor:
        """Emit the held-back frames' audio: wav (B, pending_frames * hop_length)."""
        self.finished = True
        return self._emit(self.received)

    def _emit(self, upto: int) -> torch.Tensor:
        if self.buffer is None:
            return torch.zeros(0, 0)
        if upto <= self.emitted:
            return self.buffer.new_zeros(self.buffer.shape[0], 0)
        start = max(0, self.emitted - self.left)
        window = self.buffer[:, :, start - self.buffer_start :]
        wav = self.model(window)[:, (self.emitted - start) * self.hop : (upto - start) * self.hop]
        self.emitted = upto
        keep_from = max(0, upto - self.left)  # the next window starts here
        self.buffer = self.buffer[:, :, keep_from - self.buffer_start :]
        self.buffer_start = keep_from
        return wav
