"""Flow-matching sampling for F5-TTS: Euler steps from noise (t=0) to mel (t=1) with classifier-free guidance.

Matches F5-TTS ``CFM.sample`` (f5-tts 1.1.x) with torchdiffeq's fixed-grid Euler:

* frames: ``total = max(total, max(text_len, cond_len) + 1)``, at most 65536; rows padded to the longest.
* conditioning: the reference mel where ``frame < cond_len``, zero after; the output keeps the reference there.
* noise y0: (B, T, 100) standard normal, zero past each row's length. F5-TTS reseeds the global generator
  before each row (``torch.manual_seed(seed); randn(len_b, 100)``); ``seed=`` here reproduces that exactly
  without touching global RNG state.
* time grid: ``linspace(0, 1, steps + 1)``, or an EPSS table (Empirically Pruned Step Sampling, F5-TTS v1
  ``get_epss_timesteps``) for 5, 6, 7, 10, 12, 16 steps, then sway ``t + s (cos(pi/2 t) - 1 + t)``.
* step: ``x += (t1 - t0) * v(t0, x)`` with ``v = v_c + cfg (v_c - v_u)``; the conditional and unconditional
  (no reference audio, no text) predictions run as ONE doubled batch; text embeddings are computed once.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from legato.tts.f5.dit import F5DiT

MAX_FRAMES = 65_536  # F5-TTS max_duration

# EPSS step boundaries in units of 1/32 (f5_tts/model/utils.py::get_epss_timesteps); other step counts are uniform.
EPSS_TABLES: dict[int, tuple[int, ...]] = {
    5: (0, 2, 4, 8, 16, 32),
    6: (0, 2, 4, 6, 8, 16, 32),
    7: (0, 2, 4, 6, 8, 16, 24, 32),
    10: (0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32),
    12: (0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32),
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32),
}


def time_grid(steps: int, schedule: Literal["uniform", "epss"] = "uniform", sway_coef: float | None = -1.0,
              dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(steps + 1,) flow times from 0 to 1: uniform or EPSS, then sway (negative sway crowds steps near t=0)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule == "epss" and steps in EPSS_TABLES:
        t = torch.tensor(EPSS_TABLES[steps], dtype=dtype, device=device) * (1 / 32)
    elif schedule in ("uniform", "epss"):
        t = torch.linspace(0, 1, steps + 1, dtype=dtype, device=device)
    else:
        raise ValueError(f"schedule must be 'uniform' or 'epss', got {schedule!r}")
    if sway_coef is not None:
        t = t + sway_coef * (torch.cos(math.pi / 2 * t) - 1 + t)
    return t


def initial_noise(lengths: torch.Tensor, channels: int, *, seed: int | None = None,
                  generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """(B, max(lengths), channels) N(0, 1), zero past each row's length.

    With ``seed`` every row restarts from it, exactly as F5-TTS draws with ``torch.manual_seed(seed)``
    (CPU generator; on CUDA F5-TTS draws from the CUDA generator instead, so only the CPU draw is matched)."""
    rows = []
    for n in lengths.tolist():
        g = generator
        if seed is not None:
            g = torch.Generator(device="cpu").manual_seed(seed)
        rows.append(torch.randn(n, channels, generator=g, dtype=dtype))
    out = torch.zeros(len(rows), int(lengths.max()), channels, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out.to(device)


@torch.no_grad()
def guided_flow(
    model: F5DiT, x: torch.Tensor, cond2: torch.Tensor, text_emb2: torch.Tensor, mask2: torch.Tensor, time: torch.Tensor,
    cfg_strength: float, mask_keys: bool = False,
) -> torch.Tensor:
    """Classifier-free guided flow for x (B, T, M) at ``time`` (B,), as ONE doubled batch.

    cond2, text_emb2, mask2 (2B, ...): the conditional rows, then the unconditional ones (reference
    zeroed, text dropped). Returns ``v_cond + (v_cond - v_uncond) * cfg_strength``."""
    h = model.embed_input(torch.cat((x, x)), cond2, text_emb2, mask2)
    v_cond, v_uncond = model.transform(h, torch.cat((time, time)), mask2, mask_keys).chunk(2)
    return v_cond + (v_cond - v_uncond) * cfg_strength


def sample(
    model: F5DiT,
    cond_mel: torch.Tensor,
    text_ids: torch.Tensor,
    total_frames: torch.Tensor | int,
    *,
    cond_lens: torch.Tensor | None = None,
    steps: int = 32,
    cfg_strength: float = 2.0,
    sway_coef: float | None = -1.0,
    noise: torch.Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    schedule: Literal["uniform", "epss"] = "uniform",
) -> torch.Tensor:
    """Generate mel frames after a reference.

    cond_mel (B, T_ref, M) log-mel of the reference audio; text_ids (B, N) int64 ids of reference text +
    text to speak, -1 padding; total_frames (B,) or int: reference + generated frames; cond_lens (B,)
    valid reference frames (default T_ref). ``noise`` (B, T, M) replaces the random draw (T = the padded
    total, after the minimum-length rule). Returns (B, T, M): the reference frames, then generated ones;
    frames past a row's total are padding.
    """
    b, t_ref, channels = cond_mel.shape
    device, dtype = cond_mel.device, next(model.parameters()).dtype
    cond_mel = cond_mel.to(dtype)
    if cond_lens is None:
        cond_lens = torch.full((b,), t_ref, dtype=torch.long, device=device)
    if isinstance(total_frames, int):
        total_frames = torch.full((b,), total_frames, dtype=torch.long, device=device)
    # At least one frame past both the reference and the text, so something is generated.
    text_lens = (text_ids != -1).sum(dim=-1)
    lengths = torch.maximum(torch.maximum(text_lens, cond_lens) + 1, total_frames.to(device)).clamp(max=MAX_FRAMES)
    t_max = int(lengths.max())

    frames = torch.arange(t_max, device=device)
    mask = frames[None] < lengths[:, None]  # (B, T)
    keep_ref = (frames[None] < cond_lens[:, None])[..., None]  # (B, T, 1)
    cond = torch.nn.functional.pad(cond_mel, (0, 0, 0, t_max - t_ref))
    cond = torch.where(keep_ref, cond, torch.zeros_like(cond))

    if noise is None:
        noise = initial_noise(lengths, channels, seed=seed, generator=generator, dtype=dtype, device=device)
    elif noise.shape != (b, t_max, channels):
        raise ValueError(f"noise must be {(b, t_max, channels)}, got {tuple(noise.shape)}")
    x = noise.to(device=device, dtype=dtype)

    guided = cfg_strength >= 1e-5  # F5-TTS skips the unconditional pass below this
    text_emb = model.embed_text(text_ids, mask)
    if guided:
        text_emb = torch.cat((text_emb, model.embed_text(text_ids, mask, drop_text=True)))
        cond2, mask2 = torch.cat((cond, torch.zeros_like(cond))), torch.cat((mask, mask))
    grid = time_grid(steps, schedule, sway_coef, dtype=dtype, device=device)
    for t0, t1 in zip(grid[:-1], grid[1:]):
        if guided:
            v = guided_flow(model, x, cond2, text_emb, mask2, t0.expand(b), cfg_strength)
        else:
            v = model.transform(model.embed_input(x, cond, text_emb, mask), t0.expand(b), mask)
        x = x + (t1 - t0) * v
    return torch.where(keep_ref, cond, x)
