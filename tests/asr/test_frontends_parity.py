"""ASR front-ends against their references: NeMo, FunASR and Whisper's own outputs, and the formulas.

The fixtures in tests/fixtures/frontends/ were made by the reference packages
themselves (NOTES.md there gives their exact arguments); they hold two inputs,
``ldc`` (TIMIT speech) and ``noise`` (white noise at 0.1). The formula checks
recompute each front-end in float64 NumPy/librosa from its description.
"""

import json
import math

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from legato.asr.frontends import (
    FunasrFrontend,
    KaldiFbank,
    KaldiFbankConfig,
    LfrConfig,
    NemoMel,
    NemoMelConfig,
    WhisperMel,
    WhisperMelConfig,
    kaldi_mel_banks,
    load_am_mvn,
    normalize_window,
    pad_or_trim,
)
from legato.stream.module import run_streaming
from conftest import REPO  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "frontends"
INPUTS = ["ldc", "noise"]


def _fixture(name):
    path = FIXTURES / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found: it is made by tests/fixtures/make_frontend_{name}.py with the reference package")
    data = np.load(path)
    return data, json.loads(str(data["meta"]))


def _audio(data, name):
    return torch.from_numpy(data[f"audio_{name}"])[None]


def _max_err(ours, ref):
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else ours
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours.astype(np.float64) - ref).max())


def _signal(num_samples=12000, seed=0):
    """Speech-like test signal: a chirp over noise, in float64."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    return 0.4 * np.sin(2 * np.pi * (150 + 1500 * t) * t) + 0.02 * rng.standard_normal(num_samples)


# NeMo ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", INPUTS)
@pytest.mark.parametrize("mode", ["NA", "per_feature"])
def test_nemo_matches_nemo(name, mode):
    data, meta = _fixture("nemo")
    module = NemoMel(NemoMelConfig(normalize=mode))
    audio = _audio(data, name)
    assert int(module.valid_frames(audio.shape[1])) == int(data[f"len_{name}"])
    # float32 STFT and matmul in a different order than torch.stft: measured <= 4e-6.
    assert _max_err(module(audio)[0], data[f"feat_{name}_{mode}"]) < 1e-4
    if mode == "NA":
        assert _max_err(run_streaming(module, audio, 160)[0], data[f"feat_{name}_NA"]) < 1e-4


def test_nemo_pad_to_and_buffers_match_nemo():
    data, meta = _fixture("nemo")
    module = NemoMel(NemoMelConfig(normalize="NA", pad_to=16))
    assert _max_err(module(_audio(data, "ldc"))[0], data["feat_ldc_NA_pad16"]) < 1e-4
    assert _max_err(run_streaming(module, _audio(data, "ldc"), 333)[0], data["feat_ldc_NA_pad16"]) < 1e-4
    assert _max_err(module.window, data["window"]) == 0.0  # symmetric Hann
    assert _max_err(module.filters, data["mel_fb"]) == 0.0


def test_nemo_filters_are_librosa_slaney():
    ours = NemoMel(NemoMelConfig(normalize="NA")).filters.numpy()
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=0.0, fmax=8000.0, htk=False, norm="slaney", dtype=np.float64)
    assert _max_err(ours, ref) < 1e-7


def test_nemo_matches_librosa_stft_formula():
    x = _signal()
    y = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    window = scipy.signal.windows.hann(400, sym=True)
    spec = librosa.stft(y, n_fft=512, hop_length=160, win_length=400, window=window, center=True, pad_mode="constant")
    fb = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, norm="slaney", dtype=np.float64)
    ref = np.log(fb @ np.abs(spec) ** 2 + 2.0**-24).T
    ref[x.size // 160 :] = 0.0  # NeMo's valid length is n // hop
    ours = NemoMel(NemoMelConfig(normalize="NA"))(torch.from_numpy(x).float()[None])[0]
    # float32 against float64: the quietest bins carry the error (measured 1.6e-4).
    assert _max_err(ours, ref) < 5e-4


# FunASR -------------------------------------------------------------------------------------


def _funasr():
    data, meta = _fixture("funasr")
    mvn = FIXTURES / meta["cmvn_file"]
    return data, FunasrFrontend.from_config(KaldiFbankConfig(), LfrConfig(), mvn), mvn


def test_am_mvn_parses_like_funasr():
    data, _, mvn = _funasr()
    shift, scale = load_am_mvn(mvn)
    assert np.array_equal(shift.numpy(), data["cmvn_means"]) and np.array_equal(scale.numpy(), data["cmvn_vars"])


@pytest.mark.parametrize("name", INPUTS)
def test_funasr_matches_funasr(name):
    data, module, _ = _funasr()
    audio = _audio(data, name)
    fbank = module.fbank(audio)[0]
    # Same float32 operations as torchaudio's kaldi.fbank, including float32 mel banks: measured 0.
    assert _max_err(fbank, data[f"fbank_{name}"]) < 1e-4
    assert _max_err(module.lfr(torch.from_numpy(data[f"fbank_{name}"])[None])[0], data[f"lfr_{name}"]) == 0.0
    assert _max_err(module(audio)[0], data[f"feat_{name}"]) < 1e-4
    assert _max_err(run_streaming(module, audio, 160)[0], data[f"feat_{name}"]) < 1e-4


def test_kaldi_fbank_matches_its_formula():
    """Kaldi fbank recomputed in float64 from the description in kaldi_fbank.py."""
    x = _signal() * 32768
    frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    n = np.arange(400)
    frames = frames * (0.54 - 0.46 * np.cos(2 * np.pi * n / 399))
    power = np.abs(np.fft.rfft(frames, n=512)) ** 2

    def mel(f):
        return 1127 * np.log(1 + f / 700)

    edges = mel(20) + (mel(8000) - mel(20)) / 81 * np.arange(82)
    bins = mel(np.arange(256) * 16000 / 512)
    up = (bins - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    down = (edges[2:, None] - bins) / (edges[2:, None] - edges[1:-1, None])
    banks = np.maximum(0, np.minimum(up, down))
    ref = np.log(np.maximum(power[:, :256] @ banks.T, np.finfo(np.float32).eps))
    assert _max_err(kaldi_mel_banks(80, 512, 16000, 20.0, 0.0)[:, :256], banks) < 1e-4  # float32 edges
    ours = KaldiFbank()(torch.from_numpy(x / 32768).float()[None])[0]
    # float32 against float64: after DC removal and pre-emphasis, mel bin 1 (~60 Hz) holds 1e-9 of
    # the frame's peak energy, where float32 FFT rounding moves the log by up to 7e-4.
    assert _max_err(ours, ref) < 1e-3


# Whisper ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", INPUTS)
@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_matches_whisper(name, n_mels):
    data, meta = _fixture("whisper")
    module = WhisperMel(WhisperMelConfig(n_mels=n_mels))
    audio = _audio(data, name)
    ref = data[f"feat_{name}_{n_mels}"]
    # The same torch float32 operations as whisper: measured 0.
    assert _max_err(module.log_mel_spectrogram(audio)[0], ref) < 1e-5
    assert _max_err(module.filters, data[f"mel_filters_{n_mels}"]) == 0.0
    streamed = run_streaming(module, audio, 160)
    assert _max_err(normalize_window(streamed)[0], ref) < 1e-5


def test_whisper_raw_and_30s_window_match_whisper():
    data, meta = _fixture("whisper")
    module = WhisperMel()
    audio = _audio(data, "ldc")
    assert _max_err(module(audio)[0], data["rawlog_ldc_80"]) < 1e-5
    assert _max_err(module.log_mel_spectrogram(pad_or_trim(audio))[0], data["feat_ldc_80_padded30s"]) < 1e-5


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_filters_are_librosa_slaney(n_mels):
    ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels, htk=False, norm="slaney", dtype=np.float64)
    assert _max_err(WhisperMel(WhisperMelConfig(n_mels=n_mels)).filters, ref) < 1e-7


@pytest.mark.parametrize("num_samples", [12000, 12345, 201])
def test_whisper_raw_matches_numpy_formula(num_samples):
    x = _signal(num_samples)
    padded = np.pad(x, 200, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160][:-1]
    power = np.abs(np.fft.rfft(frames * scipy.signal.get_window("hann", 400, fftbins=True))) ** 2
    fb = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, dtype=np.float64)
    ref = np.log10(np.maximum(power @ fb.T, 1e-10))
    ours = WhisperMel()(torch.from_numpy(x).float()[None])[0]
    assert ours.shape[0] == math.floor(num_samples / 160)
    # float32 against float64: the quietest bins carry the error (measured 3e-5).
    assert _max_err(ours, ref) < 2e-4
