"""Triton kernel of ``relpos_attention`` (imported only when Triton is there; see that module for the maths)."""

import triton
import triton.language as tl

from legato.kernels.pool_row_triton import pool_row


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    if IEEE:  # fp32 inputs: true fp32 products, as the reference (tl.dot would use TF32)
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def stream_of(b, ROWS, FRAMES, VALID, HAS_ROWS: tl.constexpr):
    """Batch row b's stream: (its state's row: ROWS[b] in a pool, else b; frames cached; valid chunk frames)."""
    row = pool_row(b, ROWS, HAS_ROWS)
    return row, tl.load(FRAMES + row), tl.load(VALID + b)


@triton.jit
def key_positions(kpos, frames, valid, T, LEFT, CAP):
    """Key position p in [0, LEFT + T): p < LEFT is the ring frame ``frames - LEFT + p`` (seen if it exists, in
    ring slot ``f % CAP``), p >= LEFT the chunk's own frame ``n = p - LEFT`` (seen if < valid).
    Returns (in_ring, in_chunk, n, slot)."""
    f = frames - LEFT + kpos
    n = kpos - LEFT
    return (kpos < LEFT) & (f >= 0), (n >= 0) & (n < T) & (n < valid), n, ((f % CAP) + CAP) % CAP


@triton.jit
def fold(m, l, acc, s, v, IEEE: tl.constexpr):
    """Online softmax: fold scores ``s`` (rows, keys; -inf where unseen) and values ``v`` into the running max
    ``m``, sum ``l`` and weighted values ``acc``."""
    m_new = tl.maximum(m, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen nothing yet
    alpha = tl.exp(m - m_safe)
    e = tl.exp(s - m_safe[:, None])
    return m_new, l * alpha + tl.sum(e, 1), acc * alpha[:, None] + dot(e.to(v.dtype), v, IEEE)


@triton.jit
def attend_tile(m, l, acc, qu, g, t, d, kpos, row, b, h, frames, valid, K, V, RK, RV, G,
                sk_b, sk_t, sk_h, sr_b, sr_h, sr_c, sg_b, sg_t, sg_h, T, LEFT, CAP, R, scale,
                BLOCK_R: tl.constexpr, IEEE: tl.constexpr, PRE_POS: tl.constexpr):
    """Fold the keys at positions ``kpos`` (``key_positions``) into the running softmax. Each key is one of two
    masked loads, so a tile may hold the ring's last frames and the chunk's together: with 70 cached frames and
    2-frame chunks the keys are one tile of 64 and one of 16 (8 used), where a single power-of-two tile would be
    128 wide (45 % padding)."""
    dt = K.dtype.element_ty
    in_ring, in_chunk, n, slot = key_positions(kpos, frames, valid, T, LEFT, CAP)
    ring = row * sr_b + h * sr_h + slot[:, None] * sr_c + d[None, :]
    chunk = b * sk_b + n[:, None] * sk_t + h * sk_h + d[None, :]
    k = tl.load(RK + ring, mask=in_ring[:, None], other=0.0).to(dt) + tl.load(K + chunk, mask=in_chunk[:, None], other=0.0)
    v = tl.load(RV + ring, mask=in_ring[:, None], other=0.0).to(dt) + tl.load(V + chunk, mask=in_chunk[:, None], other=0.0)
    # score = content + position; the position term of query t and key p is column (LEFT + t - p) + T - 1 of g
    shift = LEFT + t[:, None] - kpos[None, :] + T - 1
    if PRE_POS:  # g precomputed for every stream (B, T, H, R): the shift is an address, not a register gather
        pos = tl.load(G + b * sg_b + h * sg_h + t[:, None] * sg_t + shift, mask=(t < T)[:, None] & (shift >= 0) & (shift < R), other=0.0)
    else:
        pos = tl.gather(g, tl.minimum(tl.maximum(shift, 0), BLOCK_R - 1), 1)
    s = dot(qu, tl.trans(k), IEEE) + pos
    s = tl.where((in_ring | in_chunk)[None, :], s * scale, float("-inf"))
    return fold(m, l, acc, s, v, IEEE)


@triton.jit
def relpos_attention_kernel(Q, K, V, RK, RV, FRAMES, VALID, P, BU, BV, O, ROWS, G,
                            sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sr_b, sr_h, sr_c, so_b, so_t, so_h, sp_h, sp_r,
                            sg_b, sg_t, sg_h, T, LEFT, CAP, R, scale, n_heads,
                            BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr,
                            HEADS: tl.constexpr, STAGES: tl.constexpr, MAIN: tl.constexpr, N_MAIN: tl.constexpr,
                            BLOCK_TAIL: tl.constexpr, HAS_ROWS: tl.constexpr, PRE_POS: tl.constexpr):
    """One program per (stream, group of HEADS heads). A (stream, head) is little work (9 KB of keys, 9 of values),
    so a program walks several heads in a software-pipelined loop: the next head's ring rows load while this one
    computes, which keeps more bytes in flight than one short-lived program per head. Keys go in N_MAIN tiles of
    MAIN ring frames, then one tile of BLOCK_TAIL holding the remaining ring frames and the chunk's.

    ``ROWS`` (with HAS_ROWS): program b's stream state (ring, frames) is pool row ROWS[b], read and written in
    place; the chunk (q, k, v, valid, out) is batch row b. ``G`` (with PRE_POS): the position scores (q + v) . P
    of every stream, head and distance, made before the kernel by one matrix product: the kernel then loads what
    it needs instead of P (8 heads x 9 KB per stream, from L2), a product and a register gather."""
    b = tl.program_id(0).to(tl.int64)
    row, frames, valid = stream_of(b, ROWS, FRAMES, VALID, HAS_ROWS)
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, D)
    in_t = t < T
    r = tl.arange(0, BLOCK_R)
    dt = K.dtype.element_ty
    for i in tl.range(0, HEADS, num_stages=STAGES):
        h = tl.program_id(1) * HEADS + i
        q = tl.load(Q + b * sq_b + t[:, None] * sq_t + h * sq_h + d[None, :], mask=in_t[:, None], other=0.0).to(tl.float32)
        qu = (q + tl.load(BU + h * D + d).to(tl.float32)[None, :]).to(dt)
        if PRE_POS:
            g = 0.0
        else:  # position scores for every distance: g[t, r] = (q_t + v) . P[r]
            qv = (q + tl.load(BV + h * D + d).to(tl.float32)[None, :]).to(dt)
            p = tl.load(P + h * sp_h + r[:, None] * sp_r + d[None, :], mask=(r < R)[:, None], other=0.0).to(dt)
            g = dot(qv, tl.trans(p), IEEE)  # (BLOCK_T, BLOCK_R) fp32
        m = tl.full((BLOCK_T,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_T,), tl.float32)
        acc = tl.zeros((BLOCK_T, D), tl.float32)
        for tile in tl.static_range(N_MAIN):
            m, l, acc = attend_tile(m, l, acc, qu, g, t, d, tile * MAIN + tl.arange(0, MAIN), row, b, h, frames, valid,
                                    K, V, RK, RV, G, sk_b, sk_t, sk_h, sr_b, sr_h, sr_c, sg_b, sg_t, sg_h, T, LEFT, CAP, R, scale,
                                    BLOCK_R, IEEE, PRE_POS)
        m, l, acc = attend_tile(m, l, acc, qu, g, t, d, N_MAIN * MAIN + tl.arange(0, BLOCK_TAIL), row, b, h, frames, valid,
                                K, V, RK, RV, G, sk_b, sk_t, sk_h, sr_b, sr_h, sr_c, sg_b, sg_t, sg_h, T, LEFT, CAP, R, scale,
                                    BLOCK_R, IEEE, PRE_POS)
        out = acc / tl.where(l > 0, l, 1.0)[:, None]  # a query that sees nothing outputs 0, as NeMo
        tl.store(O + b * so_b + t[:, None] * so_t + h * so_h + d[None, :], out.to(O.dtype.element_ty), mask=in_t[:, None])
    tl.debug_barrier()  # every thread's ring reads are done before the chunk overwrites the oldest slots
    new_slot = (frames + t) % CAP
    for i in tl.range(0, HEADS):
        h = tl.program_id(1) * HEADS + i
        chunk = b * sk_b + t[:, None] * sk_t + h * sk_h + d[None, :]
        dst = row * sr_b + h * sr_h + new_slot[:, None] * sr_c + d[None, :]
        tl.store(RK + dst, tl.load(K + chunk, mask=in_t[:, None], other=0.0).to(RK.dtype.element_ty), mask=in_t[:, None])
        tl.store(RV + dst, tl.load(V + chunk, mask=in_t[:, None], other=0.0).to(RV.dtype.element_ty), mask=in_t[:, None])


@triton.jit
def score_row(k, qu, pos, seen, scale):
    """One query's scores against key rows ``k`` (content + position), -inf where unseen."""
    return tl.where(seen, (tl.sum(k * qu[None, :], 1) + pos) * scale, float("-inf"))


@triton.jit
def fold_row(m, l, acc, s, v):
    """Online softmax of one query: fold scores ``s`` (keys,) and values ``v`` (keys, D) into max ``m``, sum ``l``
    and weighted values ``acc`` (D,)."""
    m_new = tl.maximum(m, tl.max(s, 0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet
    alpha = tl.exp(m - m_safe)
    e = tl.exp(s - m_safe)
    return m_new, l * alpha + tl.sum(e, 0), acc * alpha + tl.sum(v * e[:, None], 0)


@triton.jit
def ring_rows(m0, l0, acc0, m1, l1, acc1, qu0, qu1, s, d, row, h, frames, RK, RV, gbase, sr_b, sr_h, sr_c, sg_t,
              LEFT, CAP, scale, T: tl.constexpr, MASKED: tl.constexpr):
    """Fold ring slots ``s`` (storage order) into both queries' softmax. Slot s holds frame f; the position term of
    query t is column frames + t - f + T - 1 (distance (frames + t) - f)."""
    f = frames - CAP + ((s - frames) % CAP + CAP) % CAP
    seen = (f >= 0) & (f >= frames - LEFT) & (s < CAP)
    ring = row * sr_b + h * sr_h + s[:, None] * sr_c + d[None, :]
    if MASKED:
        k = tl.load(RK + ring, mask=(s < CAP)[:, None], other=0.0).to(tl.float32)
        v = tl.load(RV + ring, mask=(s < CAP)[:, None], other=0.0).to(tl.float32)
    else:
        k = tl.load(RK + ring).to(tl.float32)
        v = tl.load(RV + ring).to(tl.float32)
    col = frames - f + T - 1
    m0, l0, acc0 = fold_row(m0, l0, acc0, score_row(k, qu0, tl.load(gbase + col, mask=seen, other=0.0), seen, scale), v)
    if T > 1:
        m1, l1, acc1 = fold_row(m1, l1, acc1, score_row(k, qu1, tl.load(gbase + sg_t + col + 1, mask=seen, other=0.0), seen, scale), v)
    return m0, l0, acc0, m1, l1, acc1


@triton.jit
def relpos_warp_kernel(Q, K, V, RK, RV, FRAMES, VALID, BU, O, ROWS, G,
                       sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sr_b, sr_h, sr_c, so_b, so_t, so_h,
                       sg_b, sg_t, sg_h, LEFT, CAP, scale,
                       T: tl.constexpr, BLOCK_C: tl.constexpr, KT: tl.constexpr, N_FULL: tl.constexpr,
                       TAIL: tl.constexpr, D: tl.constexpr, HAS_ROWS: tl.constexpr):
    """One (stream, head) per program (one warp: every reduction a shuffle), for chunks of one or two frames:
    each query row's online softmax over the chunk's own keys, then ring tiles of KT slots in storage order and a
    smaller masked tile of TAIL for the rest;
    CUDA-core products (tl.dot would pad the 1-2 queries to 16 rows, and its padded tiles' registers held the
    tensor-core kernel to two programs an SM)."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    row, frames, valid = stream_of(b, ROWS, FRAMES, VALID, HAS_ROWS)
    d = tl.arange(0, D)
    dt = K.dtype.element_ty
    bu = tl.load(BU + h * D + d).to(tl.float32)
    gbase = G + b * sg_b + h * sg_h
    qu0 = (tl.load(Q + b * sq_b + h * sq_h + d).to(tl.float32) + bu).to(dt).to(tl.float32)
    m0 = tl.max(tl.full((2,), float("-inf"), tl.float32), 0)
    l0 = tl.sum(tl.zeros((2,), tl.float32), 0)
    acc0 = tl.zeros((D,), tl.float32)
    qu1, m1, l1, acc1 = qu0, m0, l0, acc0  # unused with one query
    if T > 1:
        qu1 = (tl.load(Q + b * sq_b + sq_t + h * sq_h + d).to(tl.float32) + bu).to(dt).to(tl.float32)
    # the chunk's own keys (key n: distance t - n, column t - n + T - 1)
    c = tl.arange(0, BLOCK_C)
    in_chunk = (c < T) & (c < valid)
    chunk = b * sk_b + c[:, None] * sk_t + h * sk_h + d[None, :]
    kc = tl.load(K + chunk, mask=in_chunk[:, None], other=0.0).to(tl.float32)
    vc = tl.load(V + chunk, mask=in_chunk[:, None], other=0.0).to(tl.float32)
    m0, l0, acc0 = fold_row(m0, l0, acc0, score_row(kc, qu0, tl.load(gbase + (T - 1 - c), mask=in_chunk, other=0.0), in_chunk, scale), vc)
    if T > 1:
        m1, l1, acc1 = fold_row(m1, l1, acc1, score_row(kc, qu1, tl.load(gbase + sg_t + (T - c), mask=in_chunk, other=0.0), in_chunk, scale), vc)
    for tile in tl.static_range(N_FULL):
        m0, l0, acc0, m1, l1, acc1 = ring_rows(m0, l0, acc0, m1, l1, acc1, qu0, qu1, tile * KT + tl.arange(0, KT), d, row, h,
                                               frames, RK, RV, gbase, sr_b, sr_h, sr_c, sg_t, LEFT, CAP, scale, T, False)
    if TAIL > 0:  # the rest of the ring in a smaller masked tile (70 slots: 32 + 32 + 8, not 3 x 32)
        m0, l0, acc0, m1, l1, acc1 = ring_rows(m0, l0, acc0, m1, l1, acc1, qu0, qu1, N_FULL * KT + tl.arange(0, TAIL), d, row, h,
                                               frames, RK, RV, gbase, sr_b, sr_h, sr_c, sg_t, LEFT, CAP, scale, T, True)
    out = O + b * so_b + h * so_h + d
    tl.store(out, (acc0 / tl.where(l0 > 0, l0, 1.0)).to(O.dtype.element_ty))  # nothing seen: 0, as NeMo
    if T > 1:
        tl.store(out + so_t, (acc1 / tl.where(l1 > 0, l1, 1.0)).to(O.dtype.element_ty))
    tl.debug_barrier()  # the ring reads are done before the chunk overwrites the oldest slots
    keep = (c < T)[:, None]
    dst = row * sr_b + h * sr_h + ((frames + c) % CAP)[:, None] * sr_c + d[None, :]
    src = b * sk_b + c[:, None] * sk_t + h * sk_h + d[None, :]
    tl.store(RK + dst, tl.load(K + src, mask=keep, other=0.0).to(RK.dtype.element_ty), mask=keep)
    tl.store(RV + dst, tl.load(V + src, mask=keep, other=0.0).to(RV.dtype.element_ty), mask=keep)
