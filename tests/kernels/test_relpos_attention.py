"""Streaming relative-position attention over a ring K/V cache: the reference against attention over the whole
kept history (CPU, several chunks, the ring wrapping, short first/last chunks), the Triton kernel against the
reference (CUDA; skipped without it)."""

import pytest
import torch

from legato.kernels import dispatch
from legato.kernels.relpos_attention import NAME, relpos_attention_torch

H, D = 2, 16


def _history_attention(qs, ks, vs, t_steps, pos, bu, bv, left, valid_last):
    """Chunk by chunk over explicit histories: query frame p sees frames p' in [chunk start - left, chunk end)."""
    outs, seen_k, seen_v, start = [], [], [], 0
    for i, t in enumerate(t_steps):
        q, k, v = qs[i], ks[i], vs[i]  # (T, H, D)
        seen_k.append(k), seen_v.append(v)
        all_k, all_v = torch.cat(seen_k), torch.cat(seen_v)  # (F, H, D)
        valid = valid_last if i == len(t_steps) - 1 else t
        out = torch.zeros_like(q)
        for a in range(t):
            keys = [f for f in range(max(0, start - left), start + valid)]
            score = torch.stack([((q[a] + bu) * all_k[f]).sum(-1) + ((q[a] + bv) * pos[:, (start + a) - f + t - 1]).sum(-1) for f in keys], -1)
            w = torch.softmax(score * D ** -0.5, -1)  # (H, keys)
            out[a] = torch.einsum("hk,khd->hd", w, all_v[keys])
        outs.append(out)
        start += t
    return outs


def test_reference_streams_over_the_ring_like_the_whole_history():
    g = torch.Generator().manual_seed(0)
    left, cap, t_steps = 6, 8, [3, 3, 3, 3, 2]
    r = left + 2 * 3 - 1
    pos, bu, bv = torch.randn(H, r + 4, D, generator=g), torch.randn(H, D, generator=g), torch.randn(H, D, generator=g)
    qs, ks, vs = ([torch.randn(t, H, D, generator=g) for t in t_steps] for _ in range(3))
    ring_k, ring_v = torch.zeros(1, H, cap, D), torch.zeros(1, H, cap, D)
    got, frames = [], 0
    for i, t in enumerate(t_steps):
        valid = 1 if i == len(t_steps) - 1 else t
        p = pos[:, : left + 2 * t - 1]
        got.append(relpos_attention_torch(qs[i][None], ks[i][None], vs[i][None], ring_k, ring_v, torch.tensor([frames]),
                                          torch.tensor([valid]), p, bu, bv, left, D ** -0.5)[0])
        frames += t
    want = _history_attention(qs, ks, vs, t_steps, pos, bu, bv, left, 1)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("t,left,cap,d", [(2, 70, 70, 64), (14, 70, 70, 64), (1, 10, 16, 16)])
def test_triton_kernel_matches_the_reference(dtype, tol, t, left, cap, d):
    g = torch.Generator().manual_seed(t * 100 + d)
    b, h = 5, 8
    mk = lambda *s: torch.randn(*s, generator=g).to("cuda", dtype)  # noqa: E731
    q, k, v = mk(b, t, h, d), mk(b, t, h, d), mk(b, t, h, d)
    ring_k, ring_v = mk(b, h, cap, d), mk(b, h, cap, d)
    frames = torch.tensor([0, 3, left - 1, 150, 1000], device="cuda")
    valid = torch.tensor([t, t, max(t - 1, 0), 1, t], device="cuda")
    pos, bu, bv = mk(h, left + 2 * t - 1, d), mk(h, d), mk(h, d)
    backend, fn = dispatch.get(NAME, "cuda")
    assert backend == "triton"
    rk, rv = ring_k.clone(), ring_v.clone()
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = relpos_attention_torch(q, k, v, rk, rv, frames, valid, pos, bu, bv, left, d ** -0.5)
        out = fn(q, k, v, ring_k, ring_v, frames, valid, pos, bu, bv, left, d ** -0.5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    assert torch.equal(ring_k, rk) and torch.equal(ring_v, rv)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_triton_kernel_with_an_fp8_ring_matches_the_reference():
    g = torch.Generator().manual_seed(3)
    b, t, h, d, left = 4, 2, 8, 64, 70
    mk = lambda *s: torch.randn(*s, generator=g).to("cuda", torch.bfloat16)  # noqa: E731
    q, k, v, pos, bu, bv = mk(b, t, h, d), mk(b, t, h, d), mk(b, t, h, d), mk(h, left + 2 * t - 1, d), mk(h, d), mk(h, d)
    ring_k, ring_v = mk(b, h, left, d).to(torch.float8_e4m3fn), mk(b, h, left, d).to(torch.float8_e4m3fn)
    frames, valid = torch.tensor([0, 5, 69, 300], device="cuda"), torch.tensor([2, 2, 1, 2], device="cuda")
    rk, rv = ring_k.clone(), ring_v.clone()
    ref = relpos_attention_torch(q, k, v, rk, rv, frames, valid, pos, bu, bv, left, d ** -0.5)
    out = dispatch.get(NAME, "cuda")[1](q, k, v, ring_k, ring_v, frames, valid, pos, bu, bv, left, d ** -0.5)
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)
    assert torch.equal(ring_k.view(torch.uint8), rk.view(torch.uint8))


def test_position_scores_padding_leaves_the_distances_alone():
    """Distances padded to a multiple of 8 (aligned product tiles): the first R columns as unpadded, the rest 0."""
    from legato.kernels.relpos_attention import position_scores

    g = torch.Generator().manual_seed(5)
    q, pos, bv = torch.randn(3, 2, 4, 16, generator=g), torch.randn(4, 73, 16, generator=g), torch.randn(4, 16, generator=g)
    plain, padded = position_scores(q, pos, bv, pad=1), position_scores(q, pos, bv, pad=8)
    assert plain.shape == (4, 3, 2, 73) and padded.shape == (4, 3, 2, 80) and padded.dtype == torch.float32
    torch.testing.assert_close(padded[..., :73], plain)
    assert not padded[..., 73:].any()
    want = torch.einsum("bthd,hrd->hbtr", q + bv, pos)
    torch.testing.assert_close(plain, want, atol=1e-4, rtol=1e-4)
