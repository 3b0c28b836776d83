"""Spectral pieces shared by the log-mel front-ends: windows, power spectra, Slaney mel filters.

Each front-end cuts frames with :mod:`~legato.asr.frontends.framing`, weights
them with a window from here, takes :func:`power_spectrum`, and applies a mel
matrix: Slaney filters (librosa's, as NeMo and Whisper use) from here, Kaldi's
triangular banks from :mod:`~legato.asr.frontends.kaldi_fbank`.
"""

from __future__ import annotations

import librosa
import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000  # Hz, every front-end here


def hann_window(length: int, periodic: bool) -> torch.Tensor:
    """(length,) float32 Hann window; ``periodic=False`` is the symmetric one (both ends zero)."""
    return torch.hann_window(length, periodic=periodic, dtype=torch.float32)


def hamming_window(length: int) -> torch.Tensor:
    """(length,) float32 symmetric Hamming window, 0.54 - 0.46 cos (Kaldi's)."""
    return torch.hamming_window(length, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32)


def power_spectrum(frames: torch.Tensor, window: torch.Tensor, n_fft: int, offset: int) -> torch.Tensor:
    """|rfft|^2 of windowed frames zero-padded to ``n_fft``.

    frames: (B, T, L); window: (L,). The frame sits ``offset`` samples into the
    FFT buffer: torch.stft centres a short window inside ``n_fft``
    (``(n_fft - L) // 2``), Kaldi puts it first (0). Returns (B, T, n_fft // 2 + 1).
    """
    length = frames.shape[-1]
    if frames.numel() == 0:  # MKL's FFT rejects empty batches
        return frames.new_zeros(*frames.shape[:-1], n_fft // 2 + 1)
    weighted = frames * window
    if n_fft != length:
        weighted = F.pad(weighted, (offset, n_fft - length - offset))
    return torch.fft.rfft(weighted, n=n_fft).abs().square()


def slaney_mel_filters(
    n_mels: int, n_fft: int, fmin: float = 0.0, fmax: float | None = None, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) float32 Slaney-scale, Slaney-normalised triangles (librosa's defaults)."""
    fb = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney", dtype=np.float32
    )
    return torch.from_numpy(fb)


def apply_mel(power: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(B, T, n_freq) power x (n_mels, n_freq) filters -> (B, T, n_mels) mel energies."""
    return torch.matmul(power, filters.t())


def next_power_of_two(n: int) -> int:
    """Smallest power of two >= n (Kaldi's round_to_power_of_two)."""
    return 1 << max(0, n - 1).bit_length()
