"""FastConformer's ``dw_striding`` subsampling, one steady streaming step (no masks, not the first step).

Geometry (NeMo's causal convs): every conv is 3x3 with stride 2, padded 2 before and 1 after on frequency; on
time the 2 frames before the chunk come from a per-stage cache, and a steady step's first window starts one frame
into it. Stage 1 maps 1 -> C channels; each later stage is a depthwise 3x3 then a pointwise 1x1 (C -> C); ReLU
ends every stage. Output ``(j, g)`` of a stage reads inputs ``(2j - 1 + kt, 2g - 2 + kf)``, input ``-1`` being the
cache's last frame. The result (B, T', F', C) is flattened channel-major (feature ``c * F' + f``) and projected.

Caches (``contexts``, one per stage, updated in place) are channels-last (B, 2, F_in, C_in): the stage's last two
input frames, without the frequency padding (always zero, so not stored).

* ``dw_subsampling_torch``: the reference: concatenation with the cache, ``F.pad``, ``conv2d`` per conv (NCHW).
* ``dw_subsampling_triton``: the NCHW intermediates of the reference are huge (B, C, T/2, F/2) tensors that
  cost far more to write and read than to compute, so:
  - kernel ``first_stages`` computes stage 1 (1 -> C conv, bias, ReLU) in registers, straight from the mel
    frames, and feeds it to stage 2's depthwise conv, writing only that (B, T/4, F/4, C) channels-last; the
    stage-1 output is never stored except the two frames stage 2 caches. A stage-1 value is computed by up to
    two neighbouring frequency windows (1.5 times on average), which costs a few multiply-adds per value
    against a round trip through memory;
  - each pointwise conv is a cuBLAS ``F.linear`` over channels-last rows (C -> C per row);
  - kernel ``depthwise`` does a later stage's depthwise conv reading the previous pointwise output and its
    cache in place (no concatenated copy), applying the previous stage's ReLU as it loads;
  - the last ReLU runs in place, and the output projection takes the channels-last flattening through its
    weight's columns permuted to ``f * C + c`` (a 512 x 2816 copy, not a pass over the activations).
  Programs own (stream, channel block) with every frequency of it, so a program's cache reads and rewrites
  touch only its own elements (a barrier separates them); stage 1's cache, which every channel block reads,
  is concatenated with the mel frames (a few kB a stream) and rewritten before the kernel. Nothing depends on tensor values: the step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from legato.kernels.dispatch import register

NAME = "dw_subsampling_step"

KERNEL = 3  # every conv is KERNEL x KERNEL
STRIDE = 2
PAD_BEFORE = KERNEL - 1  # causal: 2 frames/bins before ...
PAD_AFTER = STRIDE - 1  # ... and 1 after
CONTEXT_FRAMES = KERNEL - 1  # input frames a stage caches between steps
STEADY_SKIP = 1  # a steady step's first window starts this many frames into the cache

# Swept on an H200 at 4096 streams (BLOCK_C 16/32/64 x 1/2/4/8 warps): 32 channels on 2 warps was fastest
# (first_stages 1.8 ms; 64 x 4 2.0 ms, 32 x 4 2.5 ms).
BLOCK_C = 32  # channels per program: 8 channel blocks of FastConformer's 256; (32 bins x 32) fp32 tiles
WARPS = 2


def conv_over_context(x: torch.Tensor, context: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, skip: int) -> torch.Tensor:
    """One causal strided conv of a stage over its cache.

    x (B, C_in, T, F) the stage's new inputs; context (B, 2, F, C_in) the two inputs before them (channels-last,
    rewritten in place to the last two of ``[context | x]``); weight (C, C_in / groups, 3, 3): a full conv for
    stage 1, depthwise after; ``skip``: cache frames the first window skips (0 on a stream's first step).
    Returns (B, C, (T + 2 - skip - 3) // 2 + 1, F // 2 + 1).
    """
    full = torch.cat([context.permute(0, 3, 1, 2), x], dim=2)
    context.copy_(full[:, :, -CONTEXT_FRAMES:].permute(0, 2, 3, 1))
    full = F.pad(full[:, :, skip:], (PAD_BEFORE, PAD_AFTER))
    return F.conv2d(full, weight, bias, stride=STRIDE, groups=x.shape[1] // weight.shape[1])


def project(x: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(B, C, T, F) -> (B, T, d): features flattened channel-major, as NeMo's ``pre_encode.out`` expects."""
    b, c, t, f = x.shape
    return F.linear(x.transpose(1, 2).reshape(b, t, c * f), *out)


@register(NAME, "torch")
def dw_subsampling_torch(mel, contexts, first, later, out, rows=None) -> torch.Tensor:
    """mel (B, T, F), T divisible by 2 ** stages; contexts per stage (B, 2, F_in, C_in), updated in place;
    first = (weight (C, 1, 3, 3), bias (C,)); later per stage = (depthwise weight (C, 1, 3, 3), bias (C,),
    pointwise weight (C, C, 1, 1), bias (C,)); out = (weight (d, C * F'), bias (d,)). Returns (B, T', d).
    ``rows`` (B,) int64: the contexts are a pool's (any number of rows) and batch row b's is pool row ``rows[b]``."""
    if rows is not None:
        own = [c.index_select(0, rows) for c in contexts]
        y = dw_subsampling_torch(mel, own, first, later, out)
        for c, o in zip(contexts, own):
            c.index_copy_(0, rows, o)
        return y
    x = F.relu(conv_over_context(mel[:, None], contexts[0], *first, STEADY_SKIP))
    for (dw_w, dw_b, pw_w, pw_b), context in zip(later, contexts[1:]):
        x = F.relu(F.conv2d(conv_over_context(x, context, dw_w, dw_b, STEADY_SKIP), pw_w, pw_b))
    return project(x, out)


def _compile():
    from legato.kernels import dw_subsampling_triton as k  # Triton only where it exists

    return k


def _fits(mel, contexts, first, later) -> bool:
    """The shapes the kernels assume; anything else takes the reference."""
    c = first[0].shape[0]
    chunk = mel.shape[1]
    return (bool(later) and chunk % (STRIDE ** (1 + len(later))) == 0 and first[0].shape == (c, 1, KERNEL, KERNEL)
            and all(w.shape == (c, 1, KERNEL, KERNEL) and p.shape == (c, c, 1, 1) for w, _, p, _ in later)
            and all(ctx.is_contiguous() for ctx in contexts))


def _out_freq(freq: int) -> int:
    return (freq + PAD_BEFORE + PAD_AFTER - KERNEL) // STRIDE + 1


@register(NAME, "triton")
def dw_subsampling_triton(mel, contexts, first, later, out, rows=None) -> torch.Tensor:
    if not _fits(mel, contexts, first, later):
        return dw_subsampling_torch(mel, contexts, first, later, out, rows)
    k = _compile()
    b, t, f = mel.shape
    c = first[0].shape[0]
    mel = mel.contiguous()
    dw_w, dw_b, pw_w, pw_b = later[0]
    t, f_mid, f = t // STRIDE ** 2, _out_freq(f), _out_freq(_out_freq(f))
    x = torch.empty(b, t, f, c, device=mel.device, dtype=pw_w.dtype)
    own = contexts[0] if rows is None else contexts[0].index_select(0, rows)
    full = torch.cat([own[..., 0].to(mel.dtype), mel], dim=1)  # (B, 2 + T, F): stage 1 reads one tensor
    if rows is None:
        contexts[0].copy_(full[:, full.shape[1] - CONTEXT_FRAMES:, :, None])
    else:
        contexts[0].index_copy_(0, rows, full[:, full.shape[1] - CONTEXT_FRAMES:, :, None].to(contexts[0].dtype))
    grid = (b, _cdiv(c, BLOCK_C))
    pool_rows = dict(ROWS=mel if rows is None else rows, HAS_ROWS=rows is not None)  # later stages' caches in place
    k.first_stages[grid](full, contexts[1], first[0].contiguous(), first[1], dw_w.contiguous(), dw_b, x, full.shape[1],
                         full.shape[2], f_mid, f, c, t, BLOCK_G=_pow2(f), BLOCK_C=BLOCK_C, num_warps=WARPS, **pool_rows)
    x = F.linear(x, pw_w.view(c, c), pw_b)  # ReLU applied by its reader
    for (dw_w, dw_b, pw_w, pw_b), context in zip(later[1:], contexts[2:]):
        y = torch.empty(b, t // STRIDE, _out_freq(f), c, device=x.device, dtype=x.dtype)
        k.depthwise[grid](x, context, dw_w.contiguous(), dw_b, y, f, y.shape[2], c, y.shape[1],
                          BLOCK_G=_pow2(y.shape[2]), BLOCK_C=BLOCK_C, num_warps=WARPS, **pool_rows)
        t, f = y.shape[1], y.shape[2]
        x = F.linear(y, pw_w.view(c, c), pw_b)
    weight = out[0].view(-1, c, f).transpose(1, 2).reshape(-1, f * c)  # columns c * F' + f -> f * C + c
    return F.linear(x.relu_().view(b, t, f * c), weight, out[1])


def _cdiv(n: int, d: int) -> int:
    return -(-n // d)


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()
