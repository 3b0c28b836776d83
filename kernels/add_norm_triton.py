"""Triton kernel of ``add_norm`` (imported only when Triton is there; see that module for the maths)."""

import triton
import triton.language as tl


@triton.jit
def add_norm_kernel(X, Y, W, B, OUT, NORM, rows, d, scale, eps,
                    SCALED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``BLOCK_M`` at a time (contiguous rows of ``d``): OUT = X + scale * Y, NORM = layer_norm(OUT) * W + B."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.arange(0, BLOCK_D)
    mask = (r < rows)[:, None] & (c < d)[None, :]
    at = r[:, None] * d + c[None, :]
    dt = OUT.dtype.element_ty
    y = tl.load(Y + at, mask=mask, other=0.0)
    if SCALED:
        y = (y.to(tl.float32) * scale).to(dt)  # rounded as the unfused scale
    x = (tl.load(X + at, mask=mask, other=0.0).to(tl.float32) + y.to(tl.float32)).to(dt)
    tl.store(OUT + at, x, mask=mask)
    xf = x.to(tl.float32)  # the norm reads the rounded sum, as the unfused ops
    mean = tl.sum(xf, 1) / d
    diff = tl.where(mask, xf - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, 1) / d + eps)
    w = tl.load(W + c, mask=c < d, other=0.0).to(tl.float32)
    b = tl.load(B + c, mask=c < d, other=0.0).to(tl.float32)
    tl.store(NORM + at, (diff * rstd[:, None] * w[None, :] + b[None, :]).to(dt), mask=mask)
