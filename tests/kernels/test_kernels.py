"""Fused kernels against their plain PyTorch references; dispatcher fallback."""

import logging

import pytest
import torch

from legato.kernels import dispatch
from legato.kernels.polyphase import polyphase_numba, polyphase_torch
from legato.stream.resample import Resampler


@pytest.mark.parametrize("source,target", [(44100, 16000), (48000, 16000), (8000, 16000), (16000, 22050)])
@pytest.mark.parametrize("channels", [1, 2])
def test_polyphase_numba_matches_torch_reference(source, target, channels):
    r = Resampler(source, target)
    g = torch.Generator().manual_seed(0)
    n = 3000
    buf = torch.randn(n, channels, generator=g)
    start = -r.taps_per_phase
    m1 = (n + start) * r.up // r.down - r.delay // r.down - 2
    args = (buf, start, 5, m1, r.phases, r.up, r.down, r.delay)
    torch.testing.assert_close(polyphase_numba(*args), polyphase_torch(*args), atol=2e-6, rtol=0)


def test_cpu_prefers_numba_and_env_forces_reference(monkeypatch):
    assert dispatch.get("polyphase_resample", "cpu")[0] == "numba"
    monkeypatch.setenv("LEGATO_KERNELS", "torch")
    assert dispatch.get("polyphase_resample", "cpu")[0] == "torch"


def test_cuda_without_triton_kernel_uses_reference():
    assert dispatch.get("polyphase_resample", "cuda")[0] == "torch"


def test_broken_fused_kernel_falls_back_once(caplog):
    calls = []

    @dispatch.register("toy_kernel", "torch")
    def ref(x):
        calls.append("torch")
        return x + 1

    @dispatch.register("toy_kernel", "numba")
    def broken(x):
        calls.append("numba")
        raise RuntimeError("compile failed")

    with caplog.at_level(logging.WARNING, logger="legato.kernels"):
        assert dispatch.call("toy_kernel", "cpu", 1) == 2
        assert dispatch.call("toy_kernel", "cpu", 1) == 2
    assert calls == ["numba", "torch", "torch"]  # tried once, then the reference only
    assert "using the torch reference" in caplog.text


def test_unknown_kernel_is_a_clear_error():
    with pytest.raises(KeyError, match="no registered torch reference"):
        dispatch.get("no_such_kernel", "cpu")
