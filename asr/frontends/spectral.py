"""Spectral pieces shared by the log-mel front-ends: windows and Slaney mel filters.

Each front-end cuts frames with :mod:`~legato.asr.frontends.framing`, weights
them with a window from here, takes :func:`~legato.kernels.spectral.power_spectrum`, and applies a mel
matrix (:func:`~legato.kernels.spectral.apply_mel`): Slaney filters (as librosa builds them for NeMo and Whisper) from here, Kaldi's
triangular banks from :mod:`~legato.asr.frontends.kaldi_fbank`.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16000  # Hz, every front-end here


def hann_window(length: int, periodic: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(length,) Hann window; ``periodic=False`` is the symmetric one (both ends zero)."""
    return torch.hann_window(length, periodic=periodic, dtype=dtype)


def hamming_window(length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(length,) symmetric Hamming window, 0.54 - 0.46 cos (Kaldi's)."""
    return torch.hamming_window(length, periodic=False, alpha=0.54, beta=0.46, dtype=dtype)


# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
SLANEY_HZ_PER_MEL = 200.0 / 3.0
SLANEY_BREAK_HZ = 1000.0
SLANEY_BREAK_MEL = SLANEY_BREAK_HZ / SLANEY_HZ_PER_MEL  # 15
SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / SLANEY_HZ_PER_MEL
    log = SLANEY_BREAK_MEL + np.log(np.maximum(hz, SLANEY_BREAK_HZ) / SLANEY_BREAK_HZ) / SLANEY_LOG_STEP
    return np.where(hz >= SLANEY_BREAK_HZ, log, linear)


def slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * SLANEY_HZ_PER_MEL
    log = SLANEY_BREAK_HZ * np.exp(SLANEY_LOG_STEP * (mel - SLANEY_BREAK_MEL))
    return np.where(mel >= SLANEY_BREAK_MEL, log, linear)


def slaney_mel_filters(
    n_mels: int, n_fft: int, fmin: float = 0.0, fmax: float | None = None, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) float32 Slaney-scale, Slaney-normalised triangles.

    The same matrix as ``librosa.filters.mel(htk=False, norm="slaney")`` (what NeMo
    uses and Whisper ships in mel_filters.npz), computed in float64 here so the
    runtime does not import librosa.
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = slaney_mel_to_hz(np.linspace(hz_to_slaney_mel(fmin), hz_to_slaney_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # Rounded to float32 before the area normalisation, as librosa does: bit-equal filters.
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per triangle
    return torch.from_numpy(weights)


def next_power_of_two(n: int) -> int:
    """Smallest power of two >= n (Kaldi's round_to_power_of_two)."""
    return 1 << max(0, n - 1).bit_length()
