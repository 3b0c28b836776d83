"""The fused log-mel kernel (kernels/log_mel.py): on CPU NemoMel still runs the exact rfft code it always ran,
streaming still equals offline; the Triton kernel equals that reference (CUDA, or the CPU interpreter when run
with TRITON_INTERPRET=1 and Triton importable; skipped otherwise).

Tolerance of the kernel. Both sides are fp32 and round differently; rounding noise sits at a fixed fraction of a
frame's loudest bin, so in ln units it grows with how far below that peak a mel bin lies. Measured against float64
(64 streams, tone + noise): within 43 dB of the peak the FFT is off by <= 3.2e-5 and the kernel by <= 1.6e-5; 65 to
87 dB below, by 7e-4 and 2.6e-4. So: 1e-4 absolute on ln mel within 40 dB of the frame's peak, 3e-3 deeper, and
overall the kernel no further from float64 than the FFT reference is (x 1.5, or 1e-4).
"""

import importlib.util
import math
import os

import pytest
import torch

from legato.asr.frontends.nemo_mel import NemoMel, NemoMelConfig
from legato.asr.frontends.spectral import apply_mel, power_spectrum
from legato.kernels import dispatch, log_mel

ATOL = 1e-4  # ln mel, bins within NEAR_LN of their frame's loudest; see the module docstring
DEEP_ATOL = 3e-3  # ln mel, quieter bins
NEAR_LN = 40 * math.log(10) / 10  # 40 dB in ln power units (9.2)
SAMPLE_RATE = 16000
HOP = 160
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None


def _module(**kw) -> NemoMel:
    return NemoMel(NemoMelConfig(normalize="NA", **kw))


def _audio(streams: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Noise from -60 to -10 dBFS per stream; every other stream also carries a loud tone (the hard case)."""
    g = torch.Generator().manual_seed(seed)
    level = 10 ** (-1 - 2.5 * torch.rand(streams, 1, generator=g))
    audio = level * torch.randn(streams, samples, generator=g)
    t = torch.arange(samples) / SAMPLE_RATE
    hz = 100 + 3900 * torch.rand(streams, 1, generator=g)
    tone = 0.5 * torch.rand(streams, 1, generator=g) * torch.sin(2 * torch.pi * hz * t)
    return audio + tone * (torch.arange(streams) % 2 == 1)[:, None]


def _frames(module: NemoMel, audio: torch.Tensor) -> torch.Tensor:
    """(B, T, 400) pre-emphasised strided frame views, as NemoMel cuts them."""
    y = module._preemphasis(audio, audio.new_zeros(audio.shape[0]))
    return module.framer.offline(y)


def _args(module: NemoMel):
    c = module.config
    return module.window, module.filters, module.dft_cos, module.dft_sin, c.n_fft, module.fft_offset, c.log_zero_guard


def test_cpu_runs_the_unchanged_rfft_path():
    module = _module()
    assert dispatch.get(log_mel.NAME, "cpu")[0] == "torch"
    frames = _frames(module, _audio(3, 8000))
    before = torch.log(apply_mel(power_spectrum(frames, module.window, 512, module.fft_offset), module.filters) + 2.0**-24)
    assert torch.equal(module._log_mel(frames), before)


def test_nemo_mel_on_speech_is_the_unchanged_rfft_path(speech_dir):
    pytest.importorskip("soundfile")
    from legato.stream.audio_io import read_audio

    audio, _ = read_audio(str(speech_dir / "en_LDC93S1.wav"), sample_rate=SAMPLE_RATE)
    module = _module()
    frames = _frames(module, audio[:, 0][None])
    before = torch.log(apply_mel(power_spectrum(frames, module.window, 512, module.fft_offset), module.filters) + 2.0**-24)
    assert torch.equal(module._log_mel(frames), before)


@pytest.mark.parametrize("chunk", [1, 160, 999, 2560])
def test_streaming_equals_offline(chunk):
    module = _module()
    audio = _audio(2, 6000, seed=chunk)
    state = module.init_state(2)
    parts = [module.step(audio[:, i:i + chunk], state) for i in range(0, audio.shape[1], chunk)]
    streamed = torch.cat(parts + [module.flush(state)], dim=1)
    torch.testing.assert_close(streamed, module(audio), atol=1e-5, rtol=1e-5)


def test_dft_bases_skip_bins_no_filter_weighs():
    module = _module()
    assert log_mel.used_bins(module.filters) == 256  # Nyquist weighs 0 at fmax = 8 kHz
    assert module.dft_cos.shape == module.dft_sin.shape == (201, 256)
    assert log_mel.used_bins(_module(fmax=4000.0).filters) <= 129


def _kernel_matches_reference(streams: int, frames_each: int, device: str) -> float:
    module = _module().to(device)
    samples = (frames_each - 1) * HOP + HOP // 2  # offline cuts samples // hop + 1 frames
    frames = _frames(module, _audio(streams, samples, seed=streams).to(device))
    assert frames.shape[:2] == (streams, frames_each)
    ref = log_mel.log_mel_torch(frames, *_args(module))
    out = log_mel.log_mel_triton(frames, *_args(module))
    err = (out - ref).abs()
    near = ref.amax(dim=-1, keepdim=True) - ref < NEAR_LN
    assert float(err[near].max()) <= ATOL and float(err.max()) <= DEEP_ATOL, (float(err[near].max()), float(err.max()))
    window, filters, _, _, n_fft, offset, guard = _args(module)
    truth = log_mel.log_mel_torch(frames.double(), window.double(), filters.double(), None, None, n_fft, offset, guard)
    fft_err, kernel_err = float((ref - truth).abs().max()), float((out - truth).abs().max())
    assert kernel_err <= max(1.5 * fft_err, ATOL), (kernel_err, fft_err)
    return float(err.max())


@pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 and Triton")
@pytest.mark.parametrize("streams,frames_each", [(1, 1), (1, 37), (37, 1), (64, 16)])
def test_triton_kernel_in_the_interpreter(streams, frames_each):
    _kernel_matches_reference(streams, frames_each, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("streams,frames_each", [(1, 1), (1, 37), (37, 1), (4096, 16)])
def test_triton_kernel_matches_the_reference(streams, frames_each):
    err = _kernel_matches_reference(streams, frames_each, "cuda")
    print(f"log-mel kernel, {streams} x {frames_each} frames: max |err| {err:.2e}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_nemo_mel_on_cuda_streams_like_on_cpu():
    module = _module()
    audio = _audio(4, 8000, seed=7)
    cpu = module(audio)
    gpu_module = _module().cuda()
    state = gpu_module.init_state(4)
    chunks = [gpu_module.step(audio[:, i:i + 2560].cuda(), state) for i in range(0, 8000, 2560)]
    streamed = torch.cat(chunks + [gpu_module.flush(state)], dim=1).cpu()
    torch.testing.assert_close(streamed, cpu, atol=DEEP_ATOL, rtol=0)
