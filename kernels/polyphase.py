"""Polyphase FIR resampling kernel: outputs m0..m1-1 of a rational resampler.

Output ``m`` sits at upsampled index ``t = m * down + delay`` and is
``sum_j buf[t // up - j - buf_start] * phases[t % up, j]`` (see
legato.stream.resample for the derivation).

* ``polyphase_torch``: the reference; gathers an (outputs x taps x channels)
  window block and contracts it.
* ``polyphase_numba``: a fused loop that never materialises the windows.
"""

from __future__ import annotations

import numpy as np
import torch

from legato.kernels.dispatch import register

NAME = "polyphase_resample"
OUTPUTS_PER_BLOCK = 8192  # bounds the reference's gathered block


@register(NAME, "torch")
def polyphase_torch(buf: torch.Tensor, buf_start: int, m0: int, m1: int, phases: torch.Tensor, up: int, down: int, delay: int) -> torch.Tensor:
    """buf: (N, C) input samples from absolute index buf_start; phases: (up, J) -> (m1 - m0, C)."""
    blocks = []
    taps = torch.arange(phases.shape[1], device=buf.device)
    for lo in range(m0, m1, OUTPUTS_PER_BLOCK):
        m = torch.arange(lo, min(lo + OUTPUTS_PER_BLOCK, m1), device=buf.device)
        t = m * down + delay
        i0 = torch.div(t, up, rounding_mode="floor")
        windows = buf[i0[:, None] - taps[None, :] - buf_start]  # (M, J, C)
        blocks.append(torch.einsum("mjc,mj->mc", windows, phases[t % up]))
    if not blocks:
        return buf.new_zeros((0, buf.shape[1]))
    return torch.cat(blocks)


_numba_kernel = None


def _compile():
    global _numba_kernel
    if _numba_kernel is None:
        import numba

        # fastmath lets the tap loop vectorise; taps are reversed so it reads forwards.
        @numba.njit(cache=True, nogil=True, fastmath=True)
        def kernel(buf, buf_start, m0, m1, reversed_phases, up, down, delay, out):
            taps = reversed_phases.shape[1]
            channels = buf.shape[1]
            for k in range(m1 - m0):
                t = (m0 + k) * down + delay
                first = t // up - buf_start - (taps - 1)
                h = reversed_phases[t % up]
                for c in range(channels):
                    acc = np.float32(0.0)
                    for j in range(taps):
                        acc += buf[first + j, c] * h[j]
                    out[k, c] = acc

        _numba_kernel = kernel
    return _numba_kernel


@register(NAME, "numba")
def polyphase_numba(buf: torch.Tensor, buf_start: int, m0: int, m1: int, phases: torch.Tensor, up: int, down: int, delay: int) -> torch.Tensor:
    if m1 > m0:  # numba does not bounds-check: check the extreme reads here
        lowest = (m0 * down + delay) // up - (phases.shape[1] - 1) - buf_start
        highest = ((m1 - 1) * down + delay) // up - buf_start
        if lowest < 0 or highest >= buf.shape[0]:
            raise IndexError(f"outputs {m0}..{m1} read samples {lowest}..{highest} outside a buffer of {buf.shape[0]}")
    kernel = _compile()
    x = np.ascontiguousarray(buf.detach().cpu().numpy(), dtype=np.float32)
    h = np.ascontiguousarray(phases.detach().cpu().numpy()[:, ::-1], dtype=np.float32)  # a few us
    out = np.empty((max(0, m1 - m0), x.shape[1]), dtype=np.float32)
    if m1 > m0:
        kernel(x, buf_start, m0, m1, h, up, down, delay, out)
    return torch.from_numpy(out)
