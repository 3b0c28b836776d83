"""NeMo's log-mel spectral step for a batch of framed streams: window -> |DFT|^2 -> Slaney mel -> ln(mel + guard).

Input: pre-emphasised frames (B, T, L) (usually strided views cut by ``Framer``), each placed ``offset`` samples
into an ``n_fft``-point FFT buffer, centred (``offset = (n_fft - L) // 2``). Output: (B, T, n_mels) float32.

* ``log_mel_torch``: exactly the code NeMoMel runs (``power_spectrum``: windowed, zero-padded ``rfft``,
  ``abs().square()``; ``apply_mel``; ``log``), on CPU and CUDA. It stays on cuFFT: a fused kernel computing the DFT
  as matrix products does ~40x an FFT's FLOPs and measured 3x slower (docs/PERFORMANCE.md, log-mel).
"""

from __future__ import annotations

import torch

from legato.kernels.spectral import apply_mel, power_spectrum
from legato.kernels.dispatch import register

NAME = "nemo_log_mel"


@register(NAME, "torch")
def log_mel_torch(frames, window, filters, n_fft: int, offset: int, guard: float) -> torch.Tensor:
    """frames (B, T, L); window (L,); filters (n_mels, n_fft // 2 + 1) -> (B, T, n_mels)."""
    return torch.log(apply_mel(power_spectrum(frames, window, n_fft, offset), filters) + guard)
