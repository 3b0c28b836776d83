"""Attention of packed new tokens over a slot KV cache (decode steps and chunked prefill in one call).

A fused autoregressive step flattens every request's new tokens into one list of N tokens (a decode step gives
one token, a prefill chunk many). Token ``i`` belongs to cache slot ``slots[i]`` and sits at absolute position
``positions[i]``; its keys/values are already in the cache, and it sees the keys at positions ``0..positions[i]``
of its own slot (causal). ``blocks`` (nb, 2) groups tokens for the kernel: ``(first, count)``, consecutive tokens
of one request (consecutive positions). Queries ``q`` (N, H, D); cache ``k``/``v`` (slots, KVH, max_tokens, D);
grouped-query attention with H = KVH * group.

* ``slot_attention_torch``: the reference, one masked SDPA per block (any device, any size).
* ``slot_attention_triton``: one program per (block, KV head) runs flash attention (online softmax) for the
  block's tokens times the KV head's query group against the slot's keys, read in place: no mask tensor, no
  gathered copy of the cache, no host synchronisation, so it can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from legato.kernels.dispatch import register

NAME = "slot_attention"
MIN_DOT = 16  # tl.dot needs every matrix side >= 16
KEYS_PER_ITERATION = 64
PREFILL_ROWS = 64  # query rows (tokens x heads of a group) per prefill block


def tokens_per_block(group: int) -> int:
    """Prompt tokens per kernel block: enough to fill a 64-row query tile with the group's heads (a decode block is
    one token; the kernel pads its tile to the dot minimum)."""
    return max(1, PREFILL_ROWS // group)


@register(NAME, "torch")
def slot_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                         blocks: torch.Tensor, scale: float, block_tokens: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
    """Writes the blocks' tokens into ``out`` (new if None) and returns it; other tokens of ``out`` are untouched."""
    out = torch.empty_like(q) if out is None else out
    group = q.shape[1] // k.shape[1]
    slot_of, pos_of = slots.tolist(), positions.tolist()
    for first, count in blocks.tolist():
        slot, p0 = slot_of[first], pos_of[first]
        length = p0 + count
        keys = k[slot, :, :length].repeat_interleave(group, 0)  # (H, length, D)
        values = v[slot, :, :length].repeat_interleave(group, 0)
        query = q[first:first + count].transpose(0, 1)  # (H, count, D)
        seen = torch.arange(length, device=q.device)[None] <= (p0 + torch.arange(count, device=q.device))[:, None]
        o = F.scaled_dot_product_attention(query, keys.to(q.dtype), values.to(q.dtype), attn_mask=seen, scale=scale)
        out[first:first + count] = o.transpose(0, 1)
    return out


_kernel = None


def _compile():
    global _kernel
    if _kernel is not None:
        return _kernel
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(Q, K, V, O, SLOTS, POS, BLOCKS, sq_n, sq_h, sk_s, sk_h, sk_l, sv_s, sv_h, sv_l, so_n, so_h, scale,
               GROUP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr):
        blk, g = tl.program_id(0), tl.program_id(1)
        first = tl.load(BLOCKS + 2 * blk)
        count = tl.load(BLOCKS + 2 * blk + 1)
        M: tl.constexpr = BLOCK_T * GROUP
        m = tl.arange(0, M)
        t = m // GROUP  # token within the block; query row m is (token t, head g * GROUP + m % GROUP)
        valid = t < count
        tok = first + t
        head = g * GROUP + m % GROUP
        d = tl.arange(0, D)
        q = tl.load(Q + tok[:, None] * sq_n + head[:, None] * sq_h + d[None, :], mask=valid[:, None], other=0.0)
        slot = tl.load(SLOTS + first)
        p0 = tl.load(POS + first)
        qpos = p0 + t
        length = p0 + count
        kb = K + slot * sk_s + g * sk_h
        vb = V + slot * sv_s + g * sv_h
        m_i = tl.full([M], float("-inf"), tl.float32)
        l_i = tl.zeros([M], tl.float32)
        acc = tl.zeros([M, D], tl.float32)
        for start in range(0, length, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            inside = n < length
            keys = tl.load(kb + n[:, None] * sk_l + d[None, :], mask=inside[:, None], other=0.0).to(q.dtype)
            if IEEE:
                s = tl.dot(q, tl.trans(keys), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(keys))
            s = tl.where((n[None, :] <= qpos[:, None]) & inside[None, :], s * scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # key 0 is always visible, so m_new is finite from the first block
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            vals = tl.load(vb + n[:, None] * sv_l + d[None, :], mask=inside[:, None], other=0.0).to(q.dtype)
            if IEEE:
                pv = tl.dot(p.to(q.dtype), vals, input_precision="ieee")
            else:
                pv = tl.dot(p.to(q.dtype), vals)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(O + tok[:, None] * so_n + head[:, None] * so_h + d[None, :], acc.to(O.dtype.element_ty), mask=valid[:, None])

    _kernel = kernel
    return kernel


def triton_supports(q: torch.Tensor, k: torch.Tensor) -> bool:
    d, group = q.shape[-1], q.shape[1] // k.shape[1]
    return d >= MIN_DOT and d & (d - 1) == 0 and group & (group - 1) == 0


@register(NAME, "triton")
def slot_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                          blocks: torch.Tensor, scale: float, block_tokens: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
    """``block_tokens``: the most tokens any block holds (sizes the query tile; see ``tokens_per_block``)."""
    if not triton_supports(q, k):
        return slot_attention_torch(q, k, v, slots, positions, blocks, scale, out=out)
    group = q.shape[1] // k.shape[1]
    block_t = max(block_tokens, 1)
    while block_t * group < MIN_DOT:
        block_t *= 2
    block_t = 1 << (block_t - 1).bit_length()
    q = q.contiguous()
    out = torch.empty_like(q) if out is None else out
    if blocks.shape[0] == 0:
        return out
    grid = (blocks.shape[0], k.shape[1])
    _compile()[grid](q, k, v, out, slots, positions, blocks, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                     v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), scale,
                     GROUP=group, BLOCK_T=block_t, BLOCK_N=KEYS_PER_ITERATION, D=q.shape[-1], IEEE=q.dtype == torch.float32)
    return out
