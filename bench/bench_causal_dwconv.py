"""The conv module's fused middle (GLU, causal depthwise conv over the cache, layer norm, SiLU), side by side (issue 8).

FastConformer-L's shape (d 512, kernel 9) at N streams of 2-frame chunks over a pool's rows, bf16: the PyTorch
reference, the general Triton kernel and the one-pass window kernel (the default for chunks of 1-2 frames). Each
is checked against the reference first, then timed (CUDA events, median of 50 after 10 warm-ups). The floor is the
bytes a call must move (the chunk's 2d inputs and d outputs, the cache row read and written) at 4.8 TB/s.
    python3 -P bench/bench_causal_dwconv.py [--streams 4096,16384]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import floor_ms, kernel_bench_streams, time_steps  # noqa: E402

from legato.kernels import causal_dwconv as cd  # noqa: E402

D_MODEL, KERNEL, FRAMES = 512, 9, 2


@torch.inference_mode()
def main() -> None:
    streams = kernel_bench_streams(__doc__)
    print(f"bf16  d {D_MODEL}  kernel {KERNEL}  T {FRAMES}")
    print("| streams | side | ms p50 | floor ms | x floor | max err vs reference |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in streams:
        g = torch.Generator(device="cuda").manual_seed(0)
        mk = lambda *s: torch.randn(*s, device="cuda", generator=g).to(torch.bfloat16)  # noqa: E731
        a, pool, w, bias, nw, nb = mk(n, FRAMES, 2 * D_MODEL), mk(n + 1, KERNEL - 1, D_MODEL), mk(D_MODEL, KERNEL), mk(D_MODEL), mk(D_MODEL), mk(D_MODEL)
        rows = torch.randperm(n + 1, device="cuda", generator=g)[:n]
        valid = torch.full((n,), FRAMES, device="cuda")
        sides = {"torch": cd.glu_dwconv_torch, "general kernel": lambda *x: _general(*x), "window kernel": cd.glu_dwconv_triton}
        ref = cd.glu_dwconv_torch(a, pool.clone(), valid, w, bias, nw, nb, 1e-5, rows)
        floor = floor_ms(n * (FRAMES * 3 * D_MODEL + 2 * (KERNEL - 1) * D_MODEL) * 2)
        for name, fn in sides.items():
            out = fn(a, pool.clone(), valid, w, bias, nw, nb, 1e-5, rows)
            err = (out.float() - ref.float()).abs().max().item()
            work = pool.clone()
            ms = sorted(time_steps(lambda fn=fn: fn(a, work, valid, w, bias, nw, nb, 1e-5, rows), 10, 50, True))[25]
            print(f"| {n} | {name} | {ms:.3f} | {floor:.3f} | {ms / floor:.1f} | {err:.1e} |", flush=True)


def _general(*args):
    """The general kernel for a 2-frame chunk (the window kernel switched off)."""
    saved, cd.MAX_WINDOW_T = cd.MAX_WINDOW_T, 0
    try:
        return cd.glu_dwconv_triton(*args)
    finally:
        cd.MAX_WINDOW_T = saved


if __name__ == "__main__":
    main()
