"""NeMo's log-mel step (kernels/log_mel.py): NemoMel runs the exact rfft code it always ran, on CPU and CUDA;
streaming equals offline."""

import pytest
import torch

from legato.asr.frontends.nemo_mel import NemoMel, NemoMelConfig
from legato.kernels.spectral import apply_mel, power_spectrum
from legato.kernels import dispatch, log_mel

CUDA_ATOL = 3e-3  # ln mel: cuFFT and the CPU FFT round differently, most in bins far below their frame's peak
SAMPLE_RATE = 16000
HOP = 160


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
    y = module.preemphasis(audio, audio.new_zeros(audio.shape[0]))
    return module.framer.offline(y)


def test_cpu_runs_the_unchanged_rfft_path():
    module = _module()
    assert dispatch.get(log_mel.NAME, "cpu")[0] == "torch"
    frames = _frames(module, _audio(3, 8000))
    before = torch.log(apply_mel(power_spectrum(frames, module.window, 512, module.fft_offset), module.filters) + 2.0**-24)
    assert torch.equal(module.log_mel_frames(frames), before)


def test_nemo_mel_on_speech_is_the_unchanged_rfft_path(speech_dir):
    pytest.importorskip("soundfile")
    from legato.stream.audio_io import read_audio

    audio, _ = read_audio(str(speech_dir / "en_LDC93S1.wav"), sample_rate=SAMPLE_RATE)
    module = _module()
    frames = _frames(module, audio[:, 0][None])
    before = torch.log(apply_mel(power_spectrum(frames, module.window, 512, module.fft_offset), module.filters) + 2.0**-24)
    assert torch.equal(module.log_mel_frames(frames), before)


@pytest.mark.parametrize("chunk", [1, 160, 999, 2560])
def test_streaming_equals_offline(chunk):
    module = _module()
    audio = _audio(2, 6000, seed=chunk)
    state = module.init_state(2)
    parts = [module.step(audio[:, i:i + chunk], state) for i in range(0, audio.shape[1], chunk)]
    streamed = torch.cat(parts + [module.flush(state)], dim=1)
    torch.testing.assert_close(streamed, module(audio), atol=1e-5, rtol=1e-5)


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
    torch.testing.assert_close(streamed, cpu, atol=CUDA_ATOL, rtol=0)
