"""Triton kernels of ``dw_subsampling`` (imported only when Triton is there; see that module for the maths).

Tiles are (bins, channels) of one stream: ``BLOCK_G`` output bins g (every one of the stage, padded to a power
of two) by ``BLOCK_C`` channels. A 3x3 stride-2 window of output bin g reads input bins 2g - 2 + kf, so an input
frame is three tiles, one per kf; frames are walked in order, a window's frame 2j folded into its sum a tile at a
time and its frame 2j + 1 carried over as the next window's first. Everything accumulates in fp32. The frame loop
is a plain loop, not unrolled: unrolled, the live tiles spilled (a first version ran 5x slower than PyTorch).
"""

import triton
import triton.language as tl

from legato.kernels.pool_row_triton import pool_row

TAPS = tl.constexpr(3)  # the 3x3 kernel's taps per axis
CACHE = tl.constexpr(2)  # frames a stage caches


@triton.jit
def bins(P, b, frame, frames, fs, c, cm, n_bins, C):
    """Frame ``frame`` of a channels-last (B, frames, n_bins, C) tensor at bins fs: (BLOCK_G, BLOCK_C) fp32, zero
    outside [0, n_bins) (the conv's frequency padding)."""
    inside = (fs >= 0) & (fs < n_bins)
    ptr = P + ((b * frames + frame) * n_bins + fs[:, None]) * C + c[None, :]
    return tl.load(ptr, mask=inside[:, None] & cm[None, :], other=0.0).to(tl.float32)


@triton.jit
def store_bins(P, b, frame, frames, fs, value, c, cm, n_bins, C):
    inside = (fs >= 0) & (fs < n_bins)
    ptr = P + ((b * frames + frame) * n_bins + fs[:, None]) * C + c[None, :]
    tl.store(ptr, value.to(P.dtype.element_ty), mask=inside[:, None] & cm[None, :])


@triton.jit
def store_frame(P, b, frame, g, at_odd, at_even, c, cm, n_bins, C):
    """Write a whole cached frame from its kf = 1 tile (bins 2g - 1) and kf = 2 tile (bins 2g): every bin once."""
    store_bins(P, b, frame, CACHE, 2 * g - 1, at_odd, c, cm, n_bins, C)
    store_bins(P, b, frame, CACHE, 2 * g, at_even, c, cm, n_bins, C)


@triton.jit
def taps(W, c, cm, kt, x0, x1, x2):
    """Row kt of a depthwise 3x3 window: sum over kf of weight[c, kt, kf] * x_kf."""
    w0 = tl.load(W + c * TAPS * TAPS + kt * TAPS, mask=cm, other=0.0).to(tl.float32)
    w1 = tl.load(W + c * TAPS * TAPS + kt * TAPS + 1, mask=cm, other=0.0).to(tl.float32)
    w2 = tl.load(W + c * TAPS * TAPS + kt * TAPS + 2, mask=cm, other=0.0).to(tl.float32)
    return x0 * w0[None, :] + x1 * w1[None, :] + x2 * w2[None, :]


@triton.jit
def stage1(FULL, W1, bias1, b, r, fs, c, cm, T_FULL, F_IN, F_MID, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr):
    """Stage 1's output frame r at bins fs: ReLU(conv + bias), zero outside [0, F_MID) (stage 2's padding).
    FULL (B, T_FULL, F_IN) is [cache | chunk]; frame r's window starts one frame into it."""
    acc = tl.zeros((BLOCK_G, BLOCK_C), tl.float32) + bias1[None, :]
    for a in tl.static_range(TAPS):
        for kb in tl.static_range(TAPS):
            fi = 2 * fs - 2 + kb
            x = tl.load(FULL + (b * T_FULL + 2 * r + 1 + a) * F_IN + fi, mask=(fi >= 0) & (fi < F_IN), other=0.0)
            w = tl.load(W1 + c * TAPS * TAPS + a * TAPS + kb, mask=cm, other=0.0).to(tl.float32)
            acc += x.to(tl.float32)[:, None] * w[None, :]
    keep = (fs >= 0) & (fs < F_MID)
    return tl.where(keep[:, None], tl.maximum(acc, 0.0), 0.0)


@triton.jit
def first_stages(FULL, CTX2, W1, B1, W2, B2, OUT, T_FULL, F_IN, F_MID, F_OUT, C, T_OUT, ROWS,
                 BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr, HAS_ROWS: tl.constexpr):
    """FULL (B, T_FULL, F_IN) stage 1's cache then the chunk; CTX2 (B, 2, F_MID, C) rewritten;
    OUT (B, T_OUT, F_OUT, C) stage 2's depthwise conv + bias (before its pointwise conv).

    Per output frame j the stage-1 frames 2j (used once) are folded into the sum tile by tile; the frames 2j + 1
    are kept for the next window, so at most six tiles are live (registers, not spills)."""
    b = tl.program_id(0).to(tl.int64)
    row = pool_row(b, ROWS, HAS_ROWS)  # the cache is a pool's: this stream's row
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    g = tl.arange(0, BLOCK_G)
    cm = c < C
    bias1 = tl.load(B1 + c, mask=cm, other=0.0).to(tl.float32)
    bias2 = tl.load(B2 + c, mask=cm, other=0.0).to(tl.float32)
    prev0 = bins(CTX2, row, 1, CACHE, 2 * g - 2, c, cm, F_MID, C)  # stage 2's input frame -1
    prev1 = bins(CTX2, row, 1, CACHE, 2 * g - 1, c, cm, F_MID, C)
    prev2 = bins(CTX2, row, 1, CACHE, 2 * g, c, cm, F_MID, C)
    tl.debug_barrier()  # every read of this program's cache elements before any thread rewrites them
    for j in range(T_OUT):
        y = bias2[None, :] + taps(W2, c, cm, 0, prev0, prev1, prev2)
        last = (g * 0 + j) == T_OUT - 1  # the last window's frame 2j is the cache's frame 0 (bin -1: not stored)
        for kf in tl.static_range(TAPS):
            even = stage1(FULL, W1, bias1, b, 2 * j, 2 * g - 2 + kf, c, cm, T_FULL, F_IN, F_MID, BLOCK_G, BLOCK_C)
            w = tl.load(W2 + c * TAPS * TAPS + TAPS + kf, mask=cm, other=0.0).to(tl.float32)
            y += even * w[None, :]
            store_bins(CTX2, row, 0, CACHE, tl.where(last, 2 * g - 2 + kf, -1), even, c, cm, F_MID, C)
        prev0 = stage1(FULL, W1, bias1, b, 2 * j + 1, 2 * g - 2, c, cm, T_FULL, F_IN, F_MID, BLOCK_G, BLOCK_C)
        prev1 = stage1(FULL, W1, bias1, b, 2 * j + 1, 2 * g - 1, c, cm, T_FULL, F_IN, F_MID, BLOCK_G, BLOCK_C)
        prev2 = stage1(FULL, W1, bias1, b, 2 * j + 1, 2 * g, c, cm, T_FULL, F_IN, F_MID, BLOCK_G, BLOCK_C)
        y += taps(W2, c, cm, 2, prev0, prev1, prev2)
        store_bins(OUT, b, j, T_OUT, g, y, c, cm, F_OUT, C)
    store_frame(CTX2, row, 1, g, prev1, prev2, c, cm, F_MID, C)  # stage 2's input 2 T_OUT - 1


@triton.jit
def depthwise(X, CTX, W, BIAS, OUT, F_IN, F_OUT, C, T_OUT, ROWS, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr,
              HAS_ROWS: tl.constexpr):
    """X (B, 2 T_OUT, F_IN, C) the previous stage's pointwise output before its ReLU (applied here as loaded);
    CTX (B, 2, F_IN, C) rewritten (a pool's, row ROWS[b], with HAS_ROWS); OUT (B, T_OUT, F_OUT, C) the depthwise
    conv + bias."""
    b = tl.program_id(0).to(tl.int64)
    row = pool_row(b, ROWS, HAS_ROWS)  # the cache is a pool's: this stream's row
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    g = tl.arange(0, BLOCK_G)
    cm = c < C
    bias = tl.load(BIAS + c, mask=cm, other=0.0).to(tl.float32)
    prev0 = bins(CTX, row, 1, CACHE, 2 * g - 2, c, cm, F_IN, C)
    prev1 = bins(CTX, row, 1, CACHE, 2 * g - 1, c, cm, F_IN, C)
    prev2 = bins(CTX, row, 1, CACHE, 2 * g, c, cm, F_IN, C)
    tl.debug_barrier()  # every read of this program's cache elements before any thread rewrites them
    for j in range(T_OUT):
        y = bias[None, :] + taps(W, c, cm, 0, prev0, prev1, prev2)
        last = (g * 0 + j) == T_OUT - 1
        for kf in tl.static_range(TAPS):
            even = tl.maximum(bins(X, b, 2 * j, 2 * T_OUT, 2 * g - 2 + kf, c, cm, F_IN, C), 0.0)
            w = tl.load(W + c * TAPS * TAPS + TAPS + kf, mask=cm, other=0.0).to(tl.float32)
            y += even * w[None, :]
            store_bins(CTX, row, 0, CACHE, tl.where(last, 2 * g - 2 + kf, -1), even, c, cm, F_IN, C)
        prev0 = tl.maximum(bins(X, b, 2 * j + 1, 2 * T_OUT, 2 * g - 2, c, cm, F_IN, C), 0.0)
        prev1 = tl.maximum(bins(X, b, 2 * j + 1, 2 * T_OUT, 2 * g - 1, c, cm, F_IN, C), 0.0)
        prev2 = tl.maximum(bins(X, b, 2 * j + 1, 2 * T_OUT, 2 * g, c, cm, F_IN, C), 0.0)
        y += taps(W, c, cm, 2, prev0, prev1, prev2)
        store_bins(OUT, b, j, T_OUT, g, y, c, cm, F_OUT, C)
    store_frame(CTX, row, 1, g, prev1, prev2, c, cm, F_IN, C)
