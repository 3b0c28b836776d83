"""Kernels that update a state pool's rows in place (``rows=``): each equals gathering those rows, running it on
the copy and scattering the copy back; other rows are untouched. The references on the CPU; the Triton kernels
on CUDA, or in the CPU interpreter with TRITON_INTERPRET=1 (skipped otherwise). Then the whole encoder step over a
pool by slot equals the step over a gathered working state."""

import pytest
import torch

from legato.asr.fastconformer.config import FastConformerConfig, Lookahead
from legato.asr.fastconformer.encoder import FastConformerEncoder
from legato.kernels import causal_dwconv, dw_subsampling, relpos_attention
from legato.kernels.bytes import byte_view

from conftest import TRITON_DEVICES

POOL, ROWS = 9, [4, 0, 2, 7, 1]  # a batch of 5 streams in a pool of 9, out of order


def _impls():
    cases = [("torch", "cpu")] + [("triton", dev) for dev in TRITON_DEVICES]
    return [pytest.param(impl, dev, marks=[pytest.mark.gpu] if dev == "cuda" else []) for impl, dev in cases]


def _pick(module, impl):
    return getattr(module, [n for n in dir(module) if n.endswith("_" + impl) and callable(getattr(module, n))][0])


def _gathered(pool_tensors, rows, fn):
    """fn over copies of ``rows`` of each pool tensor; the copies scattered back into clones of the pools."""
    pools = [p.clone() for p in pool_tensors]
    own = [byte_view(p).index_select(0, rows).view(p.dtype) for p in pools]
    out = fn(own)
    for p, o in zip(pools, own):
        byte_view(p).index_copy_(0, rows, byte_view(o))
    return out, pools


def _relpos_case(device, t, left, cap, h, d, seed):
    """A relpos attention case over pool rows; ``check(fn)`` runs ``fn(q, k, v, rings, frames, valid, pos, bu, bv,
    left, scale, rows)`` and asserts its output and rings equal the reference on gathered rows."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    rows = torch.tensor(ROWS, device=device)
    q, k, v = mk(5, t, h, d), mk(5, t, h, d), mk(5, t, h, d)
    ring_k, ring_v = mk(POOL, h, cap, d), mk(POOL, h, cap, d)
    frames = torch.tensor([0, 3, left - 1, 150, 1000, 7, 8, 9, 10], device=device)
    valid = torch.tensor([t, t, max(t - 1, 0), 1, t], device=device)
    args = (mk(h, left + 2 * t - 1, d), mk(h, d), mk(h, d), left, d ** -0.5)  # pos, bias_u, bias_v, left, scale

    def check(fn):
        want, (want_k, want_v) = _gathered([ring_k, ring_v], rows, lambda own: relpos_attention.relpos_attention_torch(
            q, k, v, own[0], own[1], frames[rows], valid, *args))
        got = fn(q, k, v, ring_k, ring_v, frames, valid, *args, rows)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
        assert torch.equal(ring_k, want_k) and torch.equal(ring_v, want_v)

    return check


@pytest.mark.parametrize("impl,device", _impls())
@pytest.mark.parametrize("t,left,cap,d,main,pre,warp_t,kt", [
    (2, 70, 70, 64, 64, False, 0, 0), (3, 10, 16, 16, 128, True, 0, 0), (2, 70, 70, 64, 32, True, 0, 0),
    (8, 70, 70, 64, 128, False, 2, 32),  # the tensor-core kernel
    (2, 70, 70, 64, 0, True, 2, 32), (1, 10, 16, 16, 0, True, 2, 16), (2, 60, 70, 64, 0, True, 2, 16)])  # the warp kernel
def test_relpos_attention_over_pool_rows(impl, device, t, left, cap, d, main, pre, warp_t, kt, monkeypatch):
    """Tensor-core kernel: key tiles of ``main`` ring frames (then the rest with the chunk's); ``pre``: position
    scores made before the kernel. Chunks of up to ``warp_t`` frames: the warp kernel, key tiles of ``kt`` slots
    (the last one masked where they do not divide the ring)."""
    monkeypatch.setattr(relpos_attention, "MAIN_TILE", main)
    monkeypatch.setattr(relpos_attention, "PRECOMPUTED_POSITIONS", pre)
    monkeypatch.setattr(relpos_attention, "MAX_WARP_KERNEL_T", warp_t)
    monkeypatch.setattr(relpos_attention, "WARP_KEY_TILE", kt)
    check = _relpos_case(device, t, left, cap, 4, d, seed=t + left)
    check(lambda *args: _pick(relpos_attention, impl)(*args))  # fp32: IEEE products in the kernel


@pytest.mark.parametrize("impl,device", _impls())
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("t", [2, 3])  # 2: the one-pass window kernel; 3: the general one
def test_glu_dwconv_over_pool_rows(impl, device, norm, t):
    g = torch.Generator().manual_seed(1)
    d, kernel = 24, 9
    mk = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    rows = torch.tensor(ROWS, device=device)
    a, cache, w, bias = mk(5, t, 2 * d), mk(POOL, kernel - 1, d), mk(d, kernel), mk(d)
    nw, nb = (mk(d), mk(d)) if norm else (None, None)
    valid = torch.tensor([t, t, 1, 0, t - 1], device=device)
    want, (want_cache,) = _gathered([cache], rows, lambda own: causal_dwconv.glu_dwconv_torch(a, own[0], valid, w, bias, nw, nb, 1e-5))
    got = _pick(causal_dwconv, impl)(a, cache, valid, w, bias, nw, nb, 1e-5, rows)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache, want_cache, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl,device", _impls())
def test_dw_subsampling_over_pool_rows(impl, device):
    g = torch.Generator().manual_seed(2)
    feat, ch, d_model, chunk = 13, 12, 16, 8
    mk = lambda *s, scale=0.3: (torch.randn(*s, generator=g) * scale).to(device)  # noqa: E731
    rows = torch.tensor(ROWS, device=device)
    first = (mk(ch, 1, 3, 3), mk(ch))
    later = tuple((mk(ch, 1, 3, 3), mk(ch), mk(ch, ch, 1, 1), mk(ch)) for _ in range(2))
    freqs = [feat, feat // 2 + 1, (feat // 2 + 1) // 2 + 1]
    contexts = [mk(POOL, 2, f, c) for f, c in zip(freqs, [1, ch, ch])]
    out = (mk(d_model, ch * (freqs[2] // 2 + 1)), mk(d_model))
    fn = _pick(dw_subsampling, impl)
    for _ in range(2):
        mel = mk(5, chunk, feat, scale=1.0)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN's fp32 convs default to TF32
            want, want_ctx = _gathered(contexts, rows, lambda own: dw_subsampling.dw_subsampling_torch(mel, own, first, later, out))
        got = fn(mel, contexts, first, later, out, rows)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        for c, w in zip(contexts, want_ctx):
            torch.testing.assert_close(c, w, atol=1e-5, rtol=1e-5)


def _tiny_encoder(device):
    torch.manual_seed(0)
    cfg = FastConformerConfig(feat_in=16, n_layers=2, d_model=32, n_heads=2, subsampling_factor=8, subsampling_conv_channels=8,
                              conv_kernel_size=9, lookaheads=(Lookahead(14, 1),))
    enc = FastConformerEncoder(cfg).eval().to(device)
    for p in enc.parameters():
        torch.nn.init.normal_(p, 0, 0.2)
    return enc


@pytest.mark.parametrize("device", ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else []))
@torch.inference_mode()
def test_encoder_step_over_pool_rows_equals_a_gathered_state(device):
    """First, steady and final steps of 5 streams in a pool of 9: by slot in place, and gathered then scattered."""
    enc = _tiny_encoder(device)
    rows = torch.tensor(ROWS, device=device)
    pool_a, pool_b = enc.init_state(POOL, device), enc.init_state(POOL, device)
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        first, final = step == 0, step == 3
        width = enc.expected_mel(0, first)
        mel = torch.randn(5, width, 16, generator=g).to(device)
        valid = torch.full((5,), width, device=device)
        end = None
        if final:
            valid = torch.tensor([width - 3, width, 1, 0, width - 1], device=device)
            end = valid < width
            if not end.any():
                end = None
        y_a, n_a = enc.stream_step(mel, pool_a, lookahead=0, first=first, valid=valid, final=end, rows=rows)
        work = pool_b.gather(rows)
        y_b, n_b = enc.stream_step(mel, work, lookahead=0, first=first, valid=valid, final=end)
        pool_b.scatter_(rows, work)
        torch.testing.assert_close(y_a, y_b, atol=1e-5, rtol=1e-5)
        assert n_a.tolist() == n_b.tolist()
    for (name, a), (_, b) in zip(pool_a.leaves(), pool_b.leaves()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
