"""Packed-token attention over a slot KV cache: the reference against plain causal attention (CPU), the Triton
kernel against the reference (CUDA; skipped without it). Rows mix decode tokens and prefill chunks, slots are
out of order, and grouped-query attention has 1 to 4 query heads per KV head."""

import pytest
import torch
from torch.nn import functional as F

from legato.kernels import dispatch
from legato.kernels.slot_attention import NAME, slot_attention_torch, tokens_per_block
from legato.stream.packed_batch import PackedBatch

ROWS = [(3, 0, 37), (1, 150, 1), (0, 70, 20), (4, 0, 1), (2, 199, 1)]  # (slot, first position, new tokens)


def _case(heads, kv_heads, dim, dtype, device, length=200, slots=6):
    g = torch.Generator().manual_seed(heads * 100 + dim)
    k = torch.randn(slots, kv_heads, length, dim, generator=g).to(device, dtype)
    v = torch.randn(slots, kv_heads, length, dim, generator=g).to(device, dtype)
    block = tokens_per_block(heads // kv_heads)
    batch = PackedBatch.build([[0] * c for _, _, c in ROWS], [p for _, p, _ in ROWS], [s for s, _, _ in ROWS], device, block)
    q = torch.randn(batch.size, heads, dim, generator=g).to(device, dtype)
    return q, k, v, batch


def _plain(q, k, v, batch):
    """Each token against its slot's keys 0..position, one token at a time, in float64."""
    out = torch.empty_like(q, dtype=torch.float64)
    group = q.shape[1] // k.shape[1]
    for i, (slot, pos) in enumerate(zip(batch.slots.tolist(), batch.positions.tolist())):
        keys = k[slot, :, : pos + 1].double().repeat_interleave(group, 0)
        vals = v[slot, :, : pos + 1].double().repeat_interleave(group, 0)
        out[i] = F.scaled_dot_product_attention(q[i, :, None].double(), keys, vals)[:, 0]
    return out


def _run(fn, q, k, v, batch, scale):
    out = torch.empty_like(q)
    for blocks, tokens in ((batch.decode_blocks, 1), (batch.prefill_blocks, batch.block_tokens)):
        fn(q, k, v, batch.slots, batch.positions, blocks, scale, tokens, out=out)
    return out


@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 2, 16), (32, 8, 64), (4, 4, 8)])
def test_reference_equals_plain_causal_attention(heads, kv_heads, dim):
    q, k, v, batch = _case(heads, kv_heads, dim, torch.float32, "cpu")
    out = _run(slot_attention_torch, q, k, v, batch, dim ** -0.5)
    torch.testing.assert_close(out.double(), _plain(q, k, v, batch), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 2, 16), (32, 8, 64), (8, 8, 128)])
def test_triton_kernel_matches_the_reference(heads, kv_heads, dim, dtype, tol):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        q, k, v, batch = _case(heads, kv_heads, dim, dtype, "cuda")
        backend, fn = dispatch.get(NAME, "cuda")
        assert backend == "triton"
        out = _run(fn, q, k, v, batch, dim ** -0.5)
        truth = _plain(q, k, v, batch)
        torch.testing.assert_close(out.double(), truth, atol=tol, rtol=tol)
        ref = _run(slot_attention_torch, q, k, v, batch, dim ** -0.5)
        assert (out.double() - truth).abs().max() <= 2 * (ref.double() - truth).abs().max() + 1e-6  # as close as the reference
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
