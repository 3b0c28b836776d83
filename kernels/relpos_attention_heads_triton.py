"""An experimental launch of ``relpos_attention``: every head of a stream in one block-diagonal tile (Triton).

The head-by-head kernel pads a chunk's T = 2 query rows to a 16-row tensor-core tile per head, so 7/8 of its
score, softmax and output work is padding. Here the rows are (head, query) pairs: H * T = 16 rows for FastConformer
(8 heads, 2-frame chunks), all real. Queries are placed block-diagonally in an (H*T, H*D) tile (row (h, t) holds
q[t, h] in columns h*D .. h*D + D - 1, zeros elsewhere) and keys as (keys, H*D) tiles (every head of a key side by
side), so one product gives each row its own head's scores; the value product gives (H*T, H*D) of which each row
keeps its own head's columns. The products do the same multiply-adds as the head-by-head kernel; the softmax works
on 16 real rows once instead of 8 tiles of 2. Keys go in tiles of BLOCK_K (online softmax); position scores are
the ones ``position_scores`` made before the launch. Not dispatched: chosen by ``launch(HEADS_TILE=True)`` for the
benchmark until a GPU run has measured it.
"""

import triton
import triton.language as tl

from legato.kernels.relpos_attention_triton import dot, fold, key_positions


@triton.jit
def relpos_heads_kernel(Q, K, V, RK, RV, FRAMES, VALID, BU, O, ROWS, G,
                        sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sr_b, sr_h, sr_c, so_b, so_t, so_h, sg_b, sg_t, sg_h,
                        T, LEFT, CAP, R, scale,
                        H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                        N_TILES: tl.constexpr, BLOCK_T: tl.constexpr, IEEE: tl.constexpr, HAS_ROWS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    if HAS_ROWS:
        row = tl.load(ROWS + b).to(tl.int64)
    else:
        row = b
    frames = tl.load(FRAMES + row)
    valid = tl.load(VALID + b)
    dt = K.dtype.element_ty
    m = tl.arange(0, BLOCK_M)
    hm, tm = m // T, m % T  # row m is query tm of head hm
    in_m = m < H * T
    c = tl.arange(0, H * D)
    hc, dc = c // D, c % D  # column c is dimension dc of head hc
    mine = (hc[None, :] == hm[:, None]) & in_m[:, None]  # the block diagonal
    q = tl.load(Q + b * sq_b + tm[:, None] * sq_t + hc[None, :] * sq_h + dc[None, :], mask=mine, other=0.0).to(tl.float32)
    qu = tl.where(mine, q + tl.load(BU + c).to(tl.float32)[None, :], 0.0).to(dt)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, H * D), tl.float32)
    for tile in tl.static_range(N_TILES):
        kpos = tile * BLOCK_K + tl.arange(0, BLOCK_K)  # key positions: ring frames, then the chunk's
        in_ring, in_chunk, n, slot = key_positions(kpos, frames, valid, T, LEFT, CAP)
        ring = row * sr_b + hc[None, :] * sr_h + slot[:, None] * sr_c + dc[None, :]
        chunk = b * sk_b + n[:, None] * sk_t + hc[None, :] * sk_h + dc[None, :]
        k = tl.load(RK + ring, mask=in_ring[:, None], other=0.0).to(dt) + tl.load(K + chunk, mask=in_chunk[:, None], other=0.0)
        v = tl.load(RV + ring, mask=in_ring[:, None], other=0.0).to(dt) + tl.load(V + chunk, mask=in_chunk[:, None], other=0.0)
        shift = LEFT + tm[:, None] - kpos[None, :] + T - 1
        pos = tl.load(G + b * sg_b + hm[:, None] * sg_h + tm[:, None] * sg_t + shift,
                      mask=in_m[:, None] & (shift >= 0) & (shift < R), other=0.0)
        s = dot(qu, tl.trans(k), IEEE) + pos
        s = tl.where((in_ring | in_chunk)[None, :] & in_m[:, None], s * scale, float("-inf"))
        m_i, l_i, acc = fold(m_i, l_i, acc, s, v, IEEE)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # a query that sees nothing outputs 0, as NeMo
    tl.store(O + b * so_b + tm[:, None] * so_t + hc[None, :] * so_h + dc[None, :], out.to(O.dtype.element_ty), mask=mine)
    tl.debug_barrier()  # every ring read is done before the chunk overwrites the oldest slots
    t = tl.arange(0, BLOCK_T)
    in_t = (t < T)[:, None]
    src = b * sk_b + t[:, None] * sk_t + hc[None, :] * sk_h + dc[None, :]
    dst = row * sr_b + hc[None, :] * sr_h + ((frames + t) % CAP)[:, None] * sr_c + dc[None, :]
    tl.store(RK + dst, tl.load(K + src, mask=in_t, other=0.0).to(RK.dtype.element_ty), mask=in_t)
    tl.store(RV + dst, tl.load(V + src, mask=in_t, other=0.0).to(RV.dtype.element_ty), mask=in_t)
