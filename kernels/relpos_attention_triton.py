"""Triton kernel of ``relpos_attention`` (imported only when Triton is there; see that module for the maths)."""

import triton
import triton.language as tl


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    if IEEE:  # fp32 inputs: true fp32 products, as the reference (tl.dot would use TF32)
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def relpos_attention_kernel(Q, K, V, RK, RV, FRAMES, VALID, P, BU, BV, O,
           sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sr_b, sr_h, sr_c, so_b, so_t, so_h, sp_h, sp_r,
           T, LEFT, CAP, R, scale,
           BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr):
    b, h = tl.program_id(0), tl.program_id(1)
    frames = tl.load(FRAMES + b)
    valid = tl.load(VALID + b)
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, D)
    in_t = t < T
    q = tl.load(Q + b * sq_b + t[:, None] * sq_t + h * sq_h + d[None, :], mask=in_t[:, None], other=0.0).to(tl.float32)
    qu = (q + tl.load(BU + h * D + d).to(tl.float32)[None, :]).to(Q.dtype.element_ty)
    qv = (q + tl.load(BV + h * D + d).to(tl.float32)[None, :]).to(Q.dtype.element_ty)
    # position scores for every distance: G[t, r] = (q_t + v) . P[r]
    r = tl.arange(0, BLOCK_R)
    p = tl.load(P + h * sp_h + r[:, None] * sp_r + d[None, :], mask=(r < R)[:, None], other=0.0).to(Q.dtype.element_ty)
    g = dot(qv, tl.trans(p), IEEE)  # (BLOCK_T, BLOCK_R) fp32
    # ring keys in time order: j -> frame frames - LEFT + j
    j = tl.arange(0, BLOCK_C)
    f = frames - LEFT + j
    seen = (j < LEFT) & (f >= 0)
    slot = ((f % CAP) + CAP) % CAP
    ring = RK + b * sr_b + h * sr_h + slot[:, None] * sr_c + d[None, :]
    kr = tl.load(ring, mask=seen[:, None], other=0.0).to(Q.dtype.element_ty)  # mixed dtypes (autocast) compute in q's
    vr = tl.load(RV + b * sr_b + h * sr_h + slot[:, None] * sr_c + d[None, :], mask=seen[:, None], other=0.0).to(Q.dtype.element_ty)
    kn = tl.load(K + b * sk_b + t[:, None] * sk_t + h * sk_h + d[None, :], mask=in_t[:, None], other=0.0).to(Q.dtype.element_ty)
    vn = tl.load(V + b * sk_b + t[:, None] * sk_t + h * sk_h + d[None, :], mask=in_t[:, None], other=0.0).to(Q.dtype.element_ty)
    s_ring = dot(qu, tl.trans(kr), IEEE) + tl.gather(g, tl.minimum(tl.maximum(LEFT - j[None, :] + t[:, None] + T - 1, 0), BLOCK_R - 1), 1)
    s_ring = tl.where(seen[None, :], s_ring * scale, float("-inf"))
    # the chunk's own keys (non-causal within the chunk)
    s_new = dot(qu, tl.trans(kn), IEEE) + tl.gather(g, tl.minimum(tl.maximum(t[:, None] - t[None, :] + T - 1, 0), BLOCK_R - 1), 1)
    s_new = tl.where((t < valid)[None, :] & in_t[None, :], s_new * scale, float("-inf"))
    m = tl.maximum(tl.max(s_ring, 1), tl.max(s_new, 1))
    m = tl.where(m == float("-inf"), 0.0, m)
    e_ring = tl.exp(s_ring - m[:, None])
    e_new = tl.exp(s_new - m[:, None])
    total = tl.sum(e_ring, 1) + tl.sum(e_new, 1)
    acc = dot(e_ring.to(vr.dtype), vr, IEEE) + dot(e_new.to(vn.dtype), vn, IEEE)
    out = acc / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(O + b * so_b + t[:, None] * so_t + h * so_h + d[None, :], out.to(O.dtype.element_ty), mask=in_t[:, None])
    tl.debug_barrier()  # every thread's ring reads are done before the chunk overwrites the oldest slots
    new_slot = (frames + t) % CAP
    dst = b * sr_b + h * sr_h + new_slot[:, None] * sr_c + d[None, :]
    tl.store(RK + dst, kn.to(RK.dtype.element_ty), mask=in_t[:, None])
    tl.store(RV + dst, vn.to(RV.dtype.element_ty), mask=in_t[:, None])


# Warps per program, timed once per shape on first use; timing runs write the ring, so it is restored after each.
tuned = triton.autotune(configs=[triton.Config({}, num_warps=w) for w in (1, 2, 4, 8)], key=["T", "LEFT", "BLOCK_T", "D"],
                        restore_value=["RK", "RV"])(relpos_attention_kernel)


@triton.jit
def relpos_attention_rows_kernel(Q, K, V, RK, RV, FRAMES, VALID, P, BU, BV, O,
                                 sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sr_b, sr_h, sr_c, so_b, so_t, so_h, sp_h, sp_r,
                                 LEFT, CAP, scale,
                                 T: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, D: tl.constexpr):
    """The same attention for chunks of a few frames, one query row at a time with multiply-adds in registers: no
    16-row tensor-core tile that would be mostly padding, no shared-memory staging of the operands (more programs
    per SM), and the relative shift as shifted loads of the position rows instead of a gather."""
    b, h = tl.program_id(0), tl.program_id(1)
    frames = tl.load(FRAMES + b)
    valid = tl.load(VALID + b)
    d = tl.arange(0, D)
    j = tl.arange(0, BLOCK_C)
    f = frames - LEFT + j
    seen = (j < LEFT) & (f >= 0)
    slot = ((f % CAP) + CAP) % CAP
    ring = b * sr_b + h * sr_h + slot[:, None] * sr_c + d[None, :]
    kr = tl.load(RK + ring, mask=seen[:, None], other=0.0).to(tl.float32)
    vr = tl.load(RV + ring, mask=seen[:, None], other=0.0).to(tl.float32)
    n = tl.arange(0, BLOCK_T)
    in_n = n < T
    chunk = b * sk_b + n[:, None] * sk_t + h * sk_h + d[None, :]
    kn = tl.load(K + chunk, mask=in_n[:, None], other=0.0)
    vn = tl.load(V + chunk, mask=in_n[:, None], other=0.0)
    bu = tl.load(BU + h * D + d).to(tl.float32)
    bv = tl.load(BV + h * D + d).to(tl.float32)
    for t in tl.static_range(T):
        q = tl.load(Q + b * sq_b + t * sq_t + h * sq_h + d).to(tl.float32)
        qu = (q + bu).to(Q.dtype.element_ty).to(tl.float32)  # the reference adds the biases in q's dtype
        qv = (q + bv).to(Q.dtype.element_ty).to(tl.float32)
        # key j (frame frames - LEFT + j) is at distance LEFT - j + t: position row LEFT - j + t + T - 1
        pr = tl.load(P + h * sp_h + (LEFT - j + t + T - 1)[:, None] * sp_r + d[None, :], mask=seen[:, None], other=0.0)
        s_ring = tl.sum(qu[None, :] * kr + qv[None, :] * pr.to(tl.float32), 1)
        s_ring = tl.where(seen, s_ring * scale, float("-inf"))
        pn = tl.load(P + h * sp_h + (t - n + T - 1)[:, None] * sp_r + d[None, :], mask=in_n[:, None], other=0.0)
        s_new = tl.sum(qu[None, :] * kn.to(tl.float32) + qv[None, :] * pn.to(tl.float32), 1)
        s_new = tl.where(in_n & (n < valid), s_new * scale, float("-inf"))
        m = tl.maximum(tl.max(s_ring, 0), tl.max(s_new, 0))
        m = tl.where(m == float("-inf"), 0.0, m)
        e_ring = tl.exp(s_ring - m)
        e_new = tl.exp(s_new - m)
        total = tl.sum(e_ring, 0) + tl.sum(e_new, 0)
        acc = tl.sum(e_ring[:, None] * vr, 0) + tl.sum(e_new[:, None] * vn.to(tl.float32), 0)
        out = acc / tl.where(total > 0, total, 1.0)
        tl.store(O + b * so_b + t * so_t + h * so_h + d, out.to(O.dtype.element_ty))
    tl.debug_barrier()  # every thread's ring reads are done before the chunk overwrites the oldest slots
    dst = b * sr_b + h * sr_h + ((frames + n) % CAP)[:, None] * sr_c + d[None, :]
    tl.store(RK + dst, kn.to(RK.dtype.element_ty), mask=in_n[:, None])
    tl.store(RV + dst, vn.to(RV.dtype.element_ty), mask=in_n[:, None])


rows_tuned = triton.autotune(configs=[triton.Config({}, num_warps=w) for w in (1, 2, 4, 8)], key=["T", "LEFT", "D"],
                             restore_value=["RK", "RV"])(relpos_attention_rows_kernel)
