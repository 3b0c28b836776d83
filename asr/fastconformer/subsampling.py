"""NeMo's causal ``dw_striding`` subsampling (x2 per stage), offline and streamed.

Stage 1 is a 3x3 stride-2 conv from 1 to C channels; every later stage a 3x3
stride-2 depthwise conv then a 1x1 conv; ReLU after each stage. Every 3x3 conv
is NeMo's ``CausalConv2D``: it pads (2 before, 1 after) on time AND frequency,
so frequency goes ``F -> F // 2 + 1`` per stage (80 -> 41 -> 21 -> 11) and a
valid length ``n -> n // 2 + 1``. Before each strided conv (and at the end)
frames at or past the valid length are zeroed, as NeMo's ``MaskedConvSequential``.
The result (B, T, C, F') is flattened channel-major and projected to d_model.

Streaming keeps, per stage, the last 2 input frames (the time kernel minus 1).
Output ``i`` of a stage reads inputs ``[2i - 2, 2i]``, so after ``m`` inputs a
stage has emitted ``(m + 1) // 2`` outputs, and at the end of the stream
``m // 2 + 1`` (the one frame of right padding can complete one more window).
A stream's first step brings ``1 + 8 R`` mel frames and emits ``R + 1``
encoder frames; every later step ``8 (R + 1)`` frames, the window of the first
new output starting one frame into the cache (``skip = 1``). So every step is
one attention chunk, as in NeMo's ``cache_aware_stream_step``, and streaming
equals offline at every frame (NeMo recomputes a 9-frame mel overlap instead,
which equals this except at its step 1 when fewer than 9 frames came before).

The caches are channels-last (B, 2, F_in, C_in) without the frequency padding. A steady step (not the first,
no row ending) goes through the ``dw_subsampling_step`` kernel (``legato.kernels.dw_subsampling``: fused
Triton on CUDA, the plain reference elsewhere); first and final steps, which need masks, stay here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from legato.asr.fastconformer.config import SUBSAMPLING_KERNEL, SUBSAMPLING_STRIDE, FastConformerConfig
from legato.kernels import dispatch
# the causal conv geometry (padding 2 before / 1 after, 2 cached frames) is the kernel module's, one definition
from legato.kernels.dw_subsampling import (
    CONTEXT_FRAMES, NAME as STEADY_STEP, PAD_AFTER, PAD_BEFORE, STEADY_SKIP, conv_over_context, project,
)


def freq_after(freq: int, stages: int) -> int:
    for _ in range(stages):
        freq = (freq + PAD_BEFORE + PAD_AFTER - SUBSAMPLING_KERNEL) // SUBSAMPLING_STRIDE + 1
    return freq


def emitted(frames_in: torch.Tensor, final: torch.Tensor | bool) -> torch.Tensor:
    """Outputs a stage has produced after ``frames_in`` inputs (int tensor), mid-stream or at the end (per row)."""
    if isinstance(final, bool):  # decided on the host: no host-to-device copy (a captured step cannot make one)
        return torch.where(frames_in > 0, frames_in // 2 + 1, 0) if final else (frames_in + 1) // 2
    at_end = torch.where(frames_in > 0, frames_in // 2 + 1, 0)
    return torch.where(final, at_end, (frames_in + 1) // 2)


def _time_mask(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Zero frames ``>= valid[b]`` of (B, C, T, F)."""
    keep = torch.arange(x.shape[2], device=x.device)[None, :] < valid[:, None]
    return x * keep[:, None, :, None].to(x.dtype)


class DwStridingSubsampling(nn.Module):
    """(B, T_mel, F) log-mel -> (B, T_mel / 8, d_model). Keys as NeMo's ``pre_encode``: ``conv.{0,2,3,5,6}``, ``out``."""

    def __init__(self, cfg: FastConformerConfig):
        super().__init__()
        ch = cfg.subsampling_conv_channels
        layers: list[nn.Module] = [nn.Conv2d(1, ch, SUBSAMPLING_KERNEL, SUBSAMPLING_STRIDE), nn.ReLU()]
        for _ in range(cfg.subsampling_stages - 1):
            layers += [nn.Conv2d(ch, ch, SUBSAMPLING_KERNEL, SUBSAMPLING_STRIDE, groups=ch), nn.Conv2d(ch, ch, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.stages = cfg.subsampling_stages
        self.channels = ch
        self.feat_in = cfg.feat_in
        self.out = nn.Linear(ch * freq_after(cfg.feat_in, self.stages), cfg.d_model)

    def _stage_modules(self) -> list[list[nn.Module]]:
        """Per stage: [strided conv, (pointwise conv), relu]."""
        mods = list(self.conv)
        return [mods[:2]] + [mods[2 + 3 * i : 5 + 3 * i] for i in range(self.stages - 1)]

    def context_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        """Per stage: the cached input frames, channels-last (B, 2, F_in, C_in)."""
        shapes, ch_in, freq = [], 1, self.feat_in
        for _ in range(self.stages):
            shapes.append((batch_size, CONTEXT_FRAMES, freq, ch_in))
            ch_in, freq = self.channels, freq_after(freq, 1)
        return shapes

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        return project(x, (self.out.weight, self.out.bias))

    def _weights(self) -> tuple:
        """The steady-step kernel's weights: stage 1's conv, per later stage (depthwise, pointwise), ``out``."""
        stages = self._stage_modules()
        first = (stages[0][0].weight, stages[0][0].bias)
        later = tuple((dw.weight, dw.bias, pw.weight, pw.bias) for dw, pw, _ in stages[1:])
        return first, later, (self.out.weight, self.out.bias)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline. mel (B, T, F), lengths (B,) -> (B, T', d_model), lengths (B,)."""
        x = mel[:, None]
        valid = lengths
        for mods in self._stage_modules():
            x = _time_mask(x, valid)
            x = mods[0](F.pad(x, (PAD_BEFORE, PAD_AFTER, PAD_BEFORE, PAD_AFTER)))
            valid = emitted(valid, final=True)
            for m in mods[1:]:
                x = m(_time_mask(x, valid))
        return self._flatten(_time_mask(x, valid)), valid

    def step(
        self, mel: torch.Tensor, contexts: list[torch.Tensor], seen: torch.Tensor, valid: torch.Tensor, first: bool,
        final: torch.Tensor | None, rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One streaming step for rows in the same phase.

        mel (B, T, F) with ``valid[b]`` real frames (the rest zero padding; only
        the final step may be short); ``contexts`` per stage (updated in place);
        ``seen`` (B,) mel frames before this step. ``first``: no step came
        before (rows' contexts are zeros, the left padding). ``final`` (B,) bool:
        the row's stream ends with this chunk (None: no row ends). Returns
        (B, T', d_model) and valid (B,). ``rows``: the contexts are a pool's and
        batch row b's are pool row ``rows[b]`` (``seen`` is the batch's).
        """
        done, new, counts = seen, valid, []  # per stage: the outputs this step emits (B,)
        for _ in range(self.stages):
            done_out = emitted(done, final=False)
            counts.append(emitted(done + new, False if final is None else final) - done_out)
            done, new = done_out, counts[-1]
        if not first and final is None:  # steady: nothing to mask, every cache window starts STEADY_SKIP in
            return dispatch.call(STEADY_STEP, mel.device, mel, contexts, *self._weights(), rows), counts[-1]
        pool = contexts
        if rows is not None:  # first and final steps (once per stream) work on a gathered copy
            contexts = [c.index_select(0, rows) for c in pool]
        x, new_in = mel[:, None], valid
        masked = final is not None
        for mods, context, new_out in zip(self._stage_modules(), contexts, counts):
            if masked:
                x = _time_mask(x, new_in)
            x = conv_over_context(x, context, mods[0].weight, mods[0].bias, 0 if first else STEADY_SKIP)
            for m in mods[1:]:
                x = m(_time_mask(x, new_out) if masked else x)
            new_in = new_out
        if masked:
            x = _time_mask(x, new_in)
        if rows is not None:
            for c, own in zip(pool, contexts):
                c.index_copy_(0, rows, own)
        return self._flatten(x), new_in
