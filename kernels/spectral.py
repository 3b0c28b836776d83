"""The spectral steps every front end shares, as tensor operations: a windowed frame's power spectrum and its mel
energies. Front ends (``asr/frontends``) build frames, windows and filters; the log-mel kernel (``log_mel.py``) runs
these in one step."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def apply_mel(power: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(B, T, n_freq) power x (n_mels, n_freq) filters -> (B, T, n_mels) mel energies."""
    return torch.matmul(power, filters.t())
