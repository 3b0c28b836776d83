"""The streamed conv-module middle (GLU, causal depthwise conv over a cache, norm, SiLU): the reference chunk by
chunk equals the whole sequence at once (CPU), the Triton kernel equals the reference (CUDA; skipped without it)."""

import pytest
import torch
import torch.nn.functional as F

from legato.kernels import dispatch
from legato.kernels.causal_dwconv import NAME, glu_dwconv_torch


def _case(b, t, d, k, dtype, device, norm, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    return mk(b, t, 2 * d), mk(b, k - 1, d), mk(d, k), mk(d), (mk(d), mk(d)) if norm else (None, None)


@pytest.mark.parametrize("norm", [True, False])
def test_chunks_over_the_cache_equal_the_whole_sequence(norm):
    d, k = 16, 9
    a, _, w, bias, (nw, nb) = _case(2, 12, d, k, torch.float32, "cpu", norm)
    cache = torch.zeros(2, k - 1, d)
    parts = [glu_dwconv_torch(a[:, i:i + 3], cache, torch.tensor([3, 3]), w, bias, nw, nb, 1e-5) for i in range(0, 12, 3)]
    whole = F.conv1d(F.pad(F.glu(a, -1).transpose(1, 2), (k - 1, 0)), w[:, None], bias, groups=d).transpose(1, 2)
    whole = F.silu(F.layer_norm(whole, (d,), nw, nb, 1e-5) if norm else whole)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("t,d,norm", [(2, 512, True), (14, 512, False), (1, 96, True)])
def test_triton_kernel_matches_the_reference(dtype, tol, t, d, norm):
    a, cache, w, bias, (nw, nb) = _case(6, t, d, 9, dtype, "cuda", norm, seed=t)
    valid = torch.tensor([t, t, max(t - 1, 0), 1, 0, t], device="cuda")
    backend, fn = dispatch.get(NAME, "cuda")
    assert backend == "triton"
    ref_cache = cache.clone()
    ref = glu_dwconv_torch(a, ref_cache, valid, w, bias, nw, nb, 1e-5)
    out = fn(a, cache, valid, w, bias, nw, nb, 1e-5)
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(cache.float(), ref_cache.float(), atol=tol, rtol=tol)
