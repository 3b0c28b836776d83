"""Residual add fused with layer norm: the Triton kernel equals the unfused reference (CUDA, or the CPU interpreter
with TRITON_INTERPRET=1; skipped otherwise), bit for bit in fp32 up to the norm's summation order."""

import pytest
import torch

from legato.kernels import add_norm

from conftest import TRITON_DEVICES


def _case(device, dtype, shape, d):
    g = torch.Generator().manual_seed(d)
    mk = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    return mk(*shape, d), mk(*shape, d), mk(d), mk(d)


def test_reference_is_the_unfused_ops():
    x, y, w, b = _case("cpu", torch.float32, (3, 2), 16)
    out, norm = add_norm.add_layer_norm_torch(x, y, 0.5, w, b, 1e-5)
    torch.testing.assert_close(out, x + 0.5 * y)
    torch.testing.assert_close(norm, torch.nn.functional.layer_norm(x + 0.5 * y, (16,), w, b, 1e-5))


@pytest.mark.parametrize("device", [pytest.param(d, marks=[pytest.mark.gpu] if d == "cuda" else []) for d in TRITON_DEVICES])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape,d,scale", [((5, 2), 512, 0.5), ((3, 7), 80, 1.0), ((1, 1), 16, 0.5)])
def test_triton_kernel_matches_the_reference(device, dtype, tol, shape, d, scale):
    x, y, w, b = _case(device, dtype, shape, d)
    want_out, want_norm = add_norm.add_layer_norm_torch(x, y, scale, w, b, 1e-5)
    out, norm = add_norm.add_layer_norm_triton(x, y, scale, w, b, 1e-5)
    if device == "cuda" or dtype == torch.float32:  # the interpreter's bf16 casts truncate
        assert torch.equal(out, want_out)  # the residual rounds exactly as the unfused scale and add
    torch.testing.assert_close(out.float(), want_out.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(norm.float(), want_norm.float(), atol=tol, rtol=tol)
