"""Triton kernel of ``causal_dwconv`` (imported only when Triton is there; see that module for the maths).

Every thread owns the same channels in every row it touches, so rewriting the cache in place is safe: row r is
written only after row T + r (> r) has been read, and no other thread reads that channel.
"""

import triton
import triton.language as tl

from legato.kernels.pool_row_triton import pool_row


@triton.jit
def gated_frame(A, C, b, row, j, c, cm, valid, sa_b, sa_t, sc_b, sc_t, d, K: tl.constexpr):
    """Frame j of [cache (K - 1 rows) of pool row ``row`` | gated chunk of batch row b], fp32, channels c."""
    jj = c * 0 + j  # the frame index as a vector: masks are vectors (also in the CPU interpreter)
    in_cache = jj < K - 1
    n = jj - (K - 1)
    x_cache = tl.load(C + row * sc_b + j * sc_t + c, mask=cm & in_cache, other=0.0).to(tl.float32)
    a = tl.load(A + b * sa_b + n * sa_t + c, mask=cm & (n >= 0), other=0.0).to(tl.float32)
    gate = tl.load(A + b * sa_b + n * sa_t + d + c, mask=cm & (n >= 0), other=0.0).to(tl.float32)
    x_new = tl.where((n >= 0) & (n < valid), a * tl.sigmoid(gate), 0.0)
    # the reference gates in the input dtype: round the same way
    x_new = x_new.to(A.dtype.element_ty).to(tl.float32)
    return tl.where(in_cache, x_cache, x_new)


@triton.jit
def norm_silu_store(y, O, b, t, so_b, so_t, c, cm, NW, NB, d, eps, HAS_NORM: tl.constexpr):
    """Output frame t: layer norm over channels (if any), SiLU, stored."""
    if HAS_NORM:
        mean = tl.sum(tl.where(cm, y, 0.0), 0) / d
        diff = tl.where(cm, y - mean, 0.0)
        y = diff * tl.rsqrt(tl.sum(diff * diff, 0) / d + eps) * tl.load(NW + c, mask=cm, other=0.0).to(tl.float32) \
            + tl.load(NB + c, mask=cm, other=0.0).to(tl.float32)
    tl.store(O + b * so_b + t * so_t + c, (y * tl.sigmoid(y)).to(O.dtype.element_ty), mask=cm)


@triton.jit
def kernel(A, C, VALID, W, BIAS, NW, NB, O, ROWS, sa_b, sa_t, sc_b, sc_t, so_b, so_t, T, d, eps,
           K: tl.constexpr, BLOCK_D: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROWS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    row = pool_row(b, ROWS, HAS_ROWS)
    c = tl.arange(0, BLOCK_D)
    cm = c < d
    valid = tl.load(VALID + b)
    bias = tl.load(BIAS + c, mask=cm, other=0.0).to(tl.float32)
    for t in range(T):
        acc = bias
        for k in tl.static_range(K):
            w = tl.load(W + c * K + k, mask=cm, other=0.0).to(tl.float32)
            acc += w * gated_frame(A, C, b, row, t + k, c, cm, valid, sa_b, sa_t, sc_b, sc_t, d, K)
        norm_silu_store(acc, O, b, t, so_b, so_t, c, cm, NW, NB, d, eps, HAS_NORM)
    for r in tl.static_range(K - 1):
        x = gated_frame(A, C, b, row, T + r, c, cm, valid, sa_b, sa_t, sc_b, sc_t, d, K)
        tl.store(C + row * sc_b + r * sc_t + c, x.to(C.dtype.element_ty), mask=cm)


@triton.jit
def window_kernel(A, C, VALID, W, BIAS, NW, NB, O, ROWS, sa_b, sa_t, sc_b, sc_t, so_b, so_t, d, eps,
                  T: tl.constexpr, K: tl.constexpr, BLOCK_D: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROWS: tl.constexpr):
    """Chunks of one or two frames: the window's K - 1 + T frames are each loaded (and gated) once, in order, and
    added into both outputs they feed (``kernel`` gates and loads a frame again for every output and tap: 26
    gated loads a step for K = 9, T = 2, against 2 here). A cache row is rewritten right after the window frame
    it takes is read (frame j goes to row j - T < j, already read), each thread in its own channels."""
    b = tl.program_id(0).to(tl.int64)
    row = pool_row(b, ROWS, HAS_ROWS)
    c = tl.arange(0, BLOCK_D)
    cm = c < d
    valid = tl.load(VALID + b)
    y0 = tl.load(BIAS + c, mask=cm, other=0.0).to(tl.float32)
    y1 = y0
    for j in tl.static_range(K - 1 + T):
        x = gated_frame(A, C, b, row, j, c, cm, valid, sa_b, sa_t, sc_b, sc_t, d, K)
        if j < K:  # output 0 takes window frames 0 .. K - 1 (tap j)
            y0 += tl.load(W + c * K + j, mask=cm, other=0.0).to(tl.float32) * x
        if T > 1:
            if j >= 1:  # output 1 takes frames 1 .. K (tap j - 1)
                y1 += tl.load(W + c * K + (j - 1), mask=cm, other=0.0).to(tl.float32) * x
        if j >= T:
            tl.store(C + row * sc_b + (j - T) * sc_t + c, x.to(C.dtype.element_ty), mask=cm)
    norm_silu_store(y0, O, b, 0, so_b, so_t, c, cm, NW, NB, d, eps, HAS_NORM)
    if T > 1:
        norm_silu_store(y1, O, b, 1, so_b, so_t, c, cm, NW, NB, d, eps, HAS_NORM)
