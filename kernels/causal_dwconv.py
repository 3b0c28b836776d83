"""A Conformer conv module's middle, streamed: GLU -> causal depthwise conv over a cache -> norm -> SiLU.

Per stream, the chunk's pointwise-conv output ``a`` (T, 2d) is gated (``a[:, :d] * sigmoid(a[:, d:])``; frames at
or past ``valid`` zeroed, NeMo's pad mask), appended to the cached last ``K - 1`` gated frames ``cache`` (K - 1, d,
time-major), convolved per channel with ``weight`` (d, K) + ``bias`` (batch norm already folded in), layer-normed
over channels when ``norm_weight`` is given, and passed through SiLU -> (T, d). The cache then holds the last
``K - 1`` gated frames (updated in place).

* ``glu_dwconv_torch``: the reference (GLU, concatenation, ``conv1d``, ``layer_norm``, ``silu``).
* ``glu_dwconv_triton``: one program per stream does it all in registers: no concatenated copy, no
  intermediate tensors between the five steps, the cache rewritten in place (a pool's row, given ``rows``).
  Chunks of one or two frames (160 ms) take ``window_kernel``: each window frame gated and loaded once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from legato.kernels.dispatch import register

NAME = "glu_causal_dwconv"


@register(NAME, "torch")
def glu_dwconv_torch(a, cache, valid, weight, bias, norm_weight, norm_bias, eps: float, rows=None) -> torch.Tensor:
    """a (B, T, 2d); cache (B, K - 1, d) updated in place; valid (B,); weight (d, K); bias (d,); norm (d,) or None.
    ``rows`` (B,) int64: ``cache`` is a pool's (any number of rows) and batch row b's is pool row ``rows[b]``."""
    if rows is not None:
        own = cache.index_select(0, rows)
        out = glu_dwconv_torch(a, own, valid, weight, bias, norm_weight, norm_bias, eps)
        cache.index_copy_(0, rows, own)
        return out
    b, t, _ = a.shape
    d, k = weight.shape
    g = F.glu(a, dim=-1) * (torch.arange(t, device=a.device)[None, :] < valid[:, None])[..., None].to(a.dtype)
    h = torch.cat([cache.to(g.dtype), g], dim=1)  # (B, K - 1 + T, d)
    cache.copy_(h[:, h.shape[1] - (k - 1):])
    y = F.conv1d(h.transpose(1, 2), weight[:, None, :].to(h.dtype), bias.to(h.dtype), groups=d).transpose(1, 2)
    if norm_weight is not None:
        y = F.layer_norm(y, (d,), norm_weight.to(y.dtype), norm_bias.to(y.dtype), eps)
    return F.silu(y)


# Chunks of up to this many frames take ``window_kernel`` (each window frame gated and loaded once): not yet
# measured against ``kernel`` (265 us a layer at 16,384 streams on an H200, ~3.4x its memory floor)
MAX_WINDOW_T = 2


def _compile(window: bool = False):
    from legato.kernels import causal_dwconv_triton as k  # Triton only where it exists

    return k.window_kernel if window else k.kernel


@register(NAME, "triton")
def glu_dwconv_triton(a, cache, valid, weight, bias, norm_weight, norm_bias, eps: float, rows=None) -> torch.Tensor:
    b, t, two_d = a.shape
    d, k = weight.shape
    if a.stride(2) != 1 or cache.stride(2) != 1 or not weight.is_contiguous():
        return glu_dwconv_torch(a, cache, valid, weight, bias, norm_weight, norm_bias, eps, rows)
    out = torch.empty(b, t, d, device=a.device, dtype=a.dtype)
    has_norm = norm_weight is not None
    args = (a, cache, valid, weight, bias, norm_weight if has_norm else bias, norm_bias if has_norm else bias, out,
            valid if rows is None else rows, a.stride(0), a.stride(1), cache.stride(0), cache.stride(1), out.stride(0), out.stride(1))
    flags = dict(K=k, BLOCK_D=1 << (d - 1).bit_length(), HAS_NORM=has_norm, HAS_ROWS=rows is not None)
    if 1 <= t <= MAX_WINDOW_T:
        _compile(window=True)[(b,)](*args, d, eps, T=t, **flags)
    else:
        _compile()[(b,)](*args, t, d, eps, **flags)
    return out
