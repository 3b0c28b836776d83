"""NeMo's log-mel spectral step for a batch of framed streams: window -> |DFT|^2 -> Slaney mel -> ln(mel + guard).

Input: pre-emphasised frames (B, T, L) (usually strided views cut by ``Framer``), each placed ``offset`` samples
into an ``n_fft``-point FFT buffer, centred (``offset = (n_fft - L) // 2``). Output: (B, T, n_mels) float32.

* ``log_mel_torch``: the reference, exactly the code NeMoMel always ran (``power_spectrum``: windowed, zero-padded
  ``rfft``, ``abs().square()``; ``apply_mel``; ``log``). CPU stays bit-identical to NeMo parity tests through it.
* ``log_mel_triton``: one launch. The FFT becomes two matrix products over the frame folded about its centre.
  Frame sample ``j`` sits at FFT index ``j + offset = m + n_fft / 2`` with ``m = j - L / 2``, so
  ``X[k] = (-1)^k sum_m xw(m) e^{-2 pi i k m / n_fft}`` and, the sign dropping out of ``|X|^2``,

      re[k] = sum_{m=0..L/2} even(m) cos(2 pi k m / n_fft),  even(m) = xw(m) + xw(-m)   (xw(0) once; xw(L/2) = 0)
      im[k] = sum_{m=1..L/2} odd(m)  sin(2 pi k m / n_fft),  odd(m)  = xw(m) - xw(-m)

  which halves the multiply-adds of a plain DFT (K = L/2 + 1 instead of L). Bins whose mel weights are all zero
  (Nyquist, and anything above ``fmax``) are not computed at all.

The kernel's FLOPs (about 0.25 MFLOP per frame: 201 x 256 bases twice, 256 x 80 filters) exceed an FFT's by
far; it wins by moving each frame's samples once and launching once, instead of eight memory-bound passes.
"""

from __future__ import annotations

import numpy as np
import torch

from legato.asr.frontends.spectral import apply_mel, power_spectrum
from legato.kernels.dispatch import register

NAME = "nemo_log_mel"

# Launch shape: frames x bins x folded samples per tile; mel bins padded to a power of two (80 -> 128).
BLOCK_FRAMES = 64
BLOCK_BINS = 64
BLOCK_SAMPLES = 32
WARPS = 8
# "ieee": plain fp32 FMAs, the FFT's accuracy. "tf32x3" (three TF32 tensor-core products) is the faster option
# the bench measures; the test tolerance (1e-4 on ln mel) is checked against the default.
PRECISION = "ieee"


def used_bins(filters: torch.Tensor) -> int:
    """Bins up to the last one any mel filter weighs (256 of 257 for NeMo's 512-point FFT: Nyquist weighs 0)."""
    weighed = (filters != 0).any(dim=0).nonzero()
    return int(weighed.max()) + 1 if weighed.numel() else 1


def dft_bases(window_samples: int, n_fft: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (L/2 + 1, bins) float32: the folded DFT of a centred frame, built in float64, rounded once."""
    m = np.arange(window_samples // 2 + 1)[:, None]
    k = np.arange(bins)[None, :]
    # k * m reduced mod n_fft first: exact integers, so the angle keeps full precision for every bin.
    angle = 2.0 * np.pi * ((k * m) % n_fft) / n_fft
    as32 = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return as32(np.cos(angle)), as32(np.sin(angle))


@register(NAME, "torch")
def log_mel_torch(frames, window, filters, dft_cos, dft_sin, n_fft: int, offset: int, guard: float) -> torch.Tensor:
    """frames (B, T, L); window (L,); filters (n_mels, n_fft // 2 + 1); the DFT bases unused -> (B, T, n_mels)."""
    return torch.log(apply_mel(power_spectrum(frames, window, n_fft, offset), filters) + guard)


def _compile():
    from legato.kernels import log_mel_triton as k  # Triton only where it exists

    return k.kernel


# Not registered with the dispatcher yet: it has run only in Triton's CPU interpreter. NemoMel on CUDA keeps the
# reference until tests/test_log_mel_kernel.py's CUDA tests and bench/bench_log_mel.py have run on a GPU; then
# decorate this with @register(NAME, "triton").
def log_mel_triton(frames, window, filters, dft_cos, dft_sin, n_fft: int, offset: int, guard: float,
                   block_frames: int = BLOCK_FRAMES, block_bins: int = BLOCK_BINS, block_samples: int = BLOCK_SAMPLES,
                   warps: int = WARPS, precision: str = PRECISION) -> torch.Tensor:
    b, t, length = frames.shape
    n_mels = filters.shape[0]
    folded, bins = dft_cos.shape
    centred = length % 2 == 0 and offset == (n_fft - length) // 2 and folded == length // 2 + 1
    if not centred or frames.dtype != torch.float32 or frames.stride(2) != 1:
        return log_mel_torch(frames, window, filters, dft_cos, dft_sin, n_fft, offset, guard)
    out = torch.empty(b, t, n_mels, device=frames.device, dtype=torch.float32)
    rows = b * t
    if rows == 0:
        return out
    grid = (-(-rows // block_frames),)
    _compile()[grid](frames, window, dft_cos, dft_sin, filters, out,
                     rows, t, frames.stride(0), frames.stride(1), length, folded, bins, n_mels,
                     filters.stride(0), filters.stride(1), guard,
                     BLOCK_M=block_frames, BLOCK_F=block_bins, BLOCK_K=block_samples,
                     BLOCK_MEL=1 << (n_mels - 1).bit_length(), PRECISION=precision, num_warps=warps)
    return out
