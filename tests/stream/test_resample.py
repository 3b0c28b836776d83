"""Streaming polyphase resampler: equals offline at any split; quality vs scipy."""

import numpy as np
import pytest
import scipy.signal
import torch

from legato.stream.audio_io import read_audio
from legato.stream.errors import SampleRateError
from legato.stream.module import random_splits
from legato.stream.resample import Resampler

RATES = [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 16000), (16000, 24000), (16000, 16000)]


def _stream(r: Resampler, x: torch.Tensor, sizes) -> torch.Tensor:
    s = r.stream()
    out, i = [], 0
    for n in sizes:
        out.append(s.push(x[i : i + n]))
        i += n
    out.append(s.flush())
    return torch.cat(out)


@pytest.mark.parametrize("source,target", RATES)
@pytest.mark.parametrize("split", [1, 2, 8, 160, "random"])
def test_streaming_equals_offline(source, target, split):
    x = torch.randn(source // 10 + 3, 2, generator=torch.Generator().manual_seed(0))
    r = Resampler(source, target)
    if split == "random":
        sizes = random_splits(x.shape[0], torch.Generator().manual_seed(1), max_chunk=400)
    else:
        sizes = [split] * -(-x.shape[0] // split)
    offline = r(x)
    assert offline.shape[0] == r.output_length(x.shape[0])
    torch.testing.assert_close(_stream(r, x, sizes), offline, rtol=0, atol=1e-6)


@pytest.mark.parametrize("source,target", RATES)
def test_matches_scipy_resample_poly(source, target):
    x = torch.randn(source // 5 + 11, 1, generator=torch.Generator().manual_seed(2))
    r = Resampler(source, target)
    ref = scipy.signal.resample_poly(x.double().numpy(), r.up, r.down, axis=0)
    np.testing.assert_allclose(r(x).numpy(), ref, atol=2e-6)


def test_real_clip_44k_to_16k_matches_scipy(speech_dir):
    audio, rate = read_audio(str(speech_dir / "en_one_two_three.wav"))
    assert rate == 44100
    ours, _ = read_audio(str(speech_dir / "en_one_two_three.wav"), sample_rate=16000)
    ref = scipy.signal.resample_poly(audio.double().numpy(), 160, 441, axis=0)
    err = ours.numpy() - ref
    snr_db = 10 * np.log10((ref**2).sum() / (err**2).sum())
    assert snr_db > 100, snr_db


def _tone(rate: int, hz: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return torch.sin(2 * torch.pi * hz * t).to(torch.float32)[:, None]


def test_passband_kept_and_aliases_suppressed():
    r = Resampler(44100, 16000)
    inner = slice(2000, -2000)  # away from the edges' zero padding
    kept = r(_tone(44100, 1000.0))[inner]
    assert abs(20 * np.log10(kept.abs().max().item())) < 0.05  # within 0.05 dB
    # 12 kHz is above the new Nyquist (8 kHz): it would alias to 4 kHz.
    alias = r(_tone(44100, 12000.0))[inner]
    assert 20 * np.log10(alias.abs().max().item()) < -50


@pytest.mark.parametrize("bad", [0, -16000, 16000.5, None])
def test_bad_rates_are_clear_errors(bad):
    with pytest.raises(SampleRateError, match="positive integer"):
        Resampler(bad, 16000)
