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
                            T, LEFT, CAP, R, scale, n_heads,
                            BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, D: tl.constexpr,
                            IEEE: tl.constexpr, HEADS: tl.constexpr, STAGES: tl.constexpr):
    """One program per (stream, group of HEADS heads). A (stream, head) is little work (9 KB of keys, 9 of values),
    so a program walks several heads in a software-pipelined loop: the next head's ring rows load while this one
    computes, which keeps more bytes in flight than one short-lived program per head."""
    b = tl.program_id(0)
    frames = tl.load(FRAMES + b)
    valid = tl.load(VALID + b)
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, D)
    in_t = t < T
    r = tl.arange(0, BLOCK_R)
    # ring keys in time order: j -> frame frames - LEFT + j
    j = tl.arange(0, BLOCK_C)
    f = frames - LEFT + j
    seen = (j < LEFT) & (f >= 0)
    slot = ((f % CAP) + CAP) % CAP
    for i in tl.range(0, HEADS, num_stages=STAGES):
        h = tl.program_id(1) * HEADS + i
        ring = b * sr_b + h * sr_h + slot[:, None] * sr_c + d[None, :]
        kr = tl.load(RK + ring, mask=seen[:, None], other=0.0).to(Q.dtype.element_ty)  # mixed dtypes compute in q's
        vr = tl.load(RV + ring, mask=seen[:, None], other=0.0).to(Q.dtype.element_ty)
        chunk = b * sk_b + t[:, None] * sk_t + h * sk_h + d[None, :]
        kn = tl.load(K + chunk, mask=in_t[:, None], other=0.0).to(Q.dtype.element_ty)
        vn = tl.load(V + chunk, mask=in_t[:, None], other=0.0).to(Q.dtype.element_ty)
        q = tl.load(Q + b * sq_b + t[:, None] * sq_t + h * sq_h + d[None, :], mask=in_t[:, None], other=0.0).to(tl.float32)
        qu = (q + tl.load(BU + h * D + d).to(tl.float32)[None, :]).to(Q.dtype.element_ty)
        qv = (q + tl.load(BV + h * D + d).to(tl.float32)[None, :]).to(Q.dtype.element_ty)
        # position scores for every distance: G[t, r] = (q_t + v) . P[r]
        p = tl.load(P + h * sp_h + r[:, None] * sp_r + d[None, :], mask=(r < R)[:, None], other=0.0).to(Q.dtype.element_ty)
        g = dot(qv, tl.trans(p), IEEE)  # (BLOCK_T, BLOCK_R) fp32
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
    for i in tl.range(0, HEADS):
        h = tl.program_id(1) * HEADS + i
        chunk = b * sk_b + t[:, None] * sk_t + h * sk_h + d[None, :]
        dst = b * sr_b + h * sr_h + new_slot[:, None] * sr_c + d[None, :]
        tl.store(RK + dst, tl.load(K + chunk, mask=in_t[:, None], other=0.0).to(RK.dtype.element_ty), mask=in_t[:, None])
        tl.store(RV + dst, tl.load(V + chunk, mask=in_t[:, None], other=0.0).to(RV.dtype.element_ty), mask=in_t[:, None])
