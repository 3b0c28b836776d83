"""Triton kernel of ``log_mel`` (imported only when Triton is there; see that module for the maths).

One program per BLOCK_M frames. For each block of BLOCK_F bins it folds the frames about their centre (window
applied on the fly) and accumulates re/im over the folded samples, then adds that block's power times the mel
filters into one (BLOCK_M, BLOCK_MEL) accumulator: nothing but the log-mels leaves the chip. Frames are re-read
once per bin block; they stay in L1/L2, so HBM sees each sample once.
"""

import triton
import triton.language as tl


@triton.jit
def kernel(X, WIN, COS, SIN, FB, OUT, rows, T, sx_b, sx_t, L, K, F, n_mels, sfb_m, sfb_f, guard,
           BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MEL: tl.constexpr,
           PRECISION: tl.constexpr):
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rm = r < rows
    # Frames may be strided views (B, T, L): row r is frame r % T of stream r // T.
    start = (r // T).to(tl.int64) * sx_b + (r % T).to(tl.int64) * sx_t
    centre = L // 2
    mel = tl.arange(0, BLOCK_MEL)
    melm = mel < n_mels
    acc = tl.zeros((BLOCK_M, BLOCK_MEL), dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        f = f0 + tl.arange(0, BLOCK_F)
        fm = f < F
        re = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
        im = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            m = k0 + tl.arange(0, BLOCK_K)
            km = m < K
            ahead = centre + m  # m = L/2 falls off the frame: its partner xw(-L/2) stands alone
            behind = centre - m  # m = 0 is counted once, in `ahead`
            am = km & (ahead < L)
            bm = km & (m > 0)
            x_a = tl.load(X + start[:, None] + ahead[None, :], mask=rm[:, None] & am[None, :], other=0.0)
            x_b = tl.load(X + start[:, None] + behind[None, :], mask=rm[:, None] & bm[None, :], other=0.0)
            x_a = x_a * tl.load(WIN + ahead, mask=am, other=0.0)[None, :]
            x_b = x_b * tl.load(WIN + behind, mask=bm, other=0.0)[None, :]
            basis = m[:, None] * F + f[None, :]
            bmask = km[:, None] & fm[None, :]
            c = tl.load(COS + basis, mask=bmask, other=0.0)
            s = tl.load(SIN + basis, mask=bmask, other=0.0)
            re += tl.dot(x_a + x_b, c, input_precision=PRECISION)
            im += tl.dot(x_a - x_b, s, input_precision=PRECISION)
        power = re * re + im * im
        fb = tl.load(FB + mel[None, :] * sfb_m + f[:, None] * sfb_f, mask=fm[:, None] & melm[None, :], other=0.0)
        acc += tl.dot(power, fb, input_precision=PRECISION)
    out = tl.log(acc + guard)
    tl.store(OUT + r[:, None].to(tl.int64) * n_mels + mel[None, :], out, mask=rm[:, None] & melm[None, :])
