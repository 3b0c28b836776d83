"""The fused residual add + layer norm against the unfused PyTorch ops, side by side (issue 8).

FastConformer-L's activations at N streams of 2-frame chunks: (N, 2, 512) bf16. Each side is checked against the
reference first, then timed (CUDA events, median of 50 after 10 warm-ups). The floor is the bytes the fused op must
move (x and y read, the sum and the norm written) at 4.8 TB/s.
    python3 -P bench/bench_add_norm.py [--streams 4096,16384]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import floor_ms, kernel_bench_streams, time_steps  # noqa: E402

from legato.kernels import add_norm  # noqa: E402

D_MODEL, FRAMES = 512, 2


@torch.inference_mode()
def main() -> None:
    streams = kernel_bench_streams(__doc__)
    print(f"bf16  d {D_MODEL}")
    print("| streams | torch ms | fused ms | ratio | floor ms | fused x floor | max norm err |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in streams:
        g = torch.Generator(device="cuda").manual_seed(0)
        mk = lambda *s: torch.randn(*s, device="cuda", generator=g).to(torch.bfloat16)  # noqa: E731
        x, y, w, b = mk(n, FRAMES, D_MODEL), mk(n, FRAMES, D_MODEL), mk(D_MODEL), mk(D_MODEL)
        ref = add_norm.add_layer_norm_torch(x, y, 0.5, w, b, 1e-5)
        got = add_norm.add_layer_norm_triton(x, y, 0.5, w, b, 1e-5)
        err = (got[1].float() - ref[1].float()).abs().max().item()
        assert torch.equal(got[0], ref[0]), "the fused residual differs from the unfused one"
        med = lambda fn: sorted(time_steps(fn, 10, 50, True))[25]  # noqa: E731
        t_ref = med(lambda: add_norm.add_layer_norm_torch(x, y, 0.5, w, b, 1e-5))
        t_fused = med(lambda: add_norm.add_layer_norm_triton(x, y, 0.5, w, b, 1e-5))
        floor = floor_ms(4 * x.numel() * x.element_size())
        print(f"| {n} | {t_ref:.3f} | {t_fused:.3f} | {t_ref / t_fused:.2f} | {floor:.3f} | {t_fused / floor:.1f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
