"""The streaming relative-position attention kernels alone, against their memory floor (issue 8).

FastConformer-L's attention shape (8 heads of 64, 70 cached frames) at 160 ms chunks (2 frames) and a wide chunk
(8 frames): the kernel at its measured launch configuration ("default"), other head-group / pipeline / warp configurations and the PyTorch reference,
with bf16 and fp8 rings. Each is first checked against the reference (64 streams), then timed (CUDA events, median
of 20 after 5 warm-ups). The floor is the bytes a call must move (ring keys/values read, chunk q/k/v read, output
and new ring rows written) at 4.8 TB/s.
    python3 -P bench/bench_relpos_kernel.py [--batches 4096,16384]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import floor_ms, time_steps  # noqa: E402

from legato.kernels import relpos_attention as ra  # noqa: E402

HEADS, D_HEAD, LEFT = 8, 64, 70


def case(b, t, ring_dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=g).to(torch.bfloat16)  # noqa: E731
    q, k, v = mk(b, t, HEADS, D_HEAD), mk(b, t, HEADS, D_HEAD), mk(b, t, HEADS, D_HEAD)
    ring_k, ring_v = mk(b, HEADS, LEFT, D_HEAD).to(ring_dtype), mk(b, HEADS, LEFT, D_HEAD).to(ring_dtype)
    frames = torch.randint(0, 500, (b,), device="cuda", generator=g)
    valid = torch.full((b,), t, device="cuda")
    pos = mk(HEADS, LEFT + 2 * t - 1, D_HEAD)
    return q, k, v, ring_k, ring_v, frames, valid, pos, mk(HEADS, D_HEAD), mk(HEADS, D_HEAD)


def attention_floor_ms(b, t, ring_dtype) -> float:
    ring_item = torch.empty(0, dtype=ring_dtype).element_size()
    return floor_ms(b * HEADS * D_HEAD * (2 * LEFT * ring_item + 2 * t * ring_item + 4 * t * 2))


# Fixed configurations beside the default: (heads per program, pipeline stages, warps, ring frames per main key
# tile, position scores made before the kernel). Main 64: the 70-frame ring split 64 + the rest with the chunk
# (online softmax over two tiles); 128: one tile. "pre": (q + v) . P for every stream by one matrix product
# before the kernel, which then loads its shifted columns (no P loads, product or register gather in the kernel).
FIXED = [(8, 2, 4, 128, True)]
# One warp per (stream, head) ("warp", the default for chunks of 1-2 frames): (ring slots per key tile, warps)
WARP = [(16, 1), (32, 1), (32, 2), (64, 2)]


KEPT = ("default", "tensor-core kernel", "torch", "pool rows", "ring copy", "position scores", "position scores, unpadded")  # what runs at the later batch sizes


def impls(t):
    """The kernel at its default launch, a few fixed configurations, and the default reading its streams' rings
    by pool row ("pool rows": a batch of the pool's odd rows, as the bulk path steps a pool in place)."""
    out = {"default": ra.launch, "tensor-core kernel": functools.partial(ra.launch, WARP_KERNEL=False)}
    for heads, stages, warps, main, pre in FIXED:
        out[f"h{heads} s{stages} w{warps} m{main}{' pre' if pre else ''}"] = functools.partial(
            ra.launch, HEADS=heads, STAGES=stages, num_warps=warps, MAIN=main, PRE_POS=pre, WARP_KERNEL=False)
    if t <= 2:
        for kt, warps in WARP:
            out[f"warp k{kt} w{warps}"] = functools.partial(ra.launch, KT=kt, num_warps=warps, WARP_KERNEL=True)
    return out


def pool_case(x):
    """The case's rings as rows 1, 3, 5, ... of a pool twice its size (frames likewise)."""
    b = x[0].shape[0]
    rows = torch.arange(1, 2 * b, 2, device="cuda")
    rings = []
    for ring in x[3:5]:
        pool = torch.zeros((2 * b,) + ring.shape[1:], device="cuda", dtype=ring.dtype)
        pool.view(torch.uint8)[rows] = ring.view(torch.uint8)
        rings.append(pool)
    frames = torch.zeros(2 * b, device="cuda", dtype=x[5].dtype)
    frames[rows] = x[5]
    return (*x[:3], *rings, frames, *x[6:]), rows


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="4096,16384")
    ap.add_argument("--chunks", default="2,8")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  heads {HEADS} x {D_HEAD}, left {LEFT}")
    print("| chunk T | ring | streams | kernel | ms p50 | floor ms | x floor | max err vs reference |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    for t in (int(x) for x in args.chunks.split(",")):
        for ring_dtype in (torch.bfloat16, torch.float8_e4m3fn):
            check = case(64, t, ring_dtype, seed=1)
            ref_rings = (check[3].clone(), check[4].clone())
            ref = ra.relpos_attention_torch(*check[:3], *ref_rings, *check[5:], LEFT, D_HEAD ** -0.5)
            errs = {}
            for name, fn in impls(t).items():
                args_ = list(check)
                args_[3], args_[4] = check[3].clone(), check[4].clone()
                out = torch.empty_like(check[0])
                fn(*args_, LEFT, D_HEAD ** -0.5, out)
                ring_err = max((args_[3].float() - ref_rings[0].float()).abs().max().item(), (args_[4].float() - ref_rings[1].float()).abs().max().item())
                errs[name] = f"{(out.float() - ref.float()).abs().max().item():.2e} (ring {ring_err:.0e})"
            for b in (int(x) for x in args.batches.split(",")):
                x = case(b, t, ring_dtype)
                out = torch.empty_like(x[0])
                runs = {name: (lambda fn=fn, x=x, out=out: fn(*x, LEFT, D_HEAD ** -0.5, out)) for name, fn in impls(t).items()}
                runs["torch"] = lambda x=x: ra.relpos_attention_torch(*x, LEFT, D_HEAD ** -0.5)
                pooled, rows = pool_case(x)
                runs["pool rows"] = lambda x=pooled, rows=rows, out=out: ra.launch(*x, LEFT, D_HEAD ** -0.5, out, rows)
                runs["position scores"] = lambda x=x: ra.position_scores(x[0], x[7], x[9])
                runs["position scores, unpadded"] = lambda x=x: ra.position_scores(x[0], x[7], x[9], pad=1)
                copies = [torch.empty_like(r) for r in x[3:5]]  # the rings' bytes read and written once: the bandwidth a plain copy gets
                runs["ring copy"] = lambda x=x, c=copies: [a.copy_(r) for a, r in zip(c, x[3:5])]
                fl = attention_floor_ms(b, t, ring_dtype)
                if b != int(args.batches.split(",")[0]):  # the configurations only at the first batch size
                    runs = {k_: f_ for k_, f_ in runs.items() if k_ in KEPT}
                for name, fn in runs.items():
                    try:
                        ms = sorted(time_steps(fn, 5, 20, True))[10]
                    except torch.OutOfMemoryError:
                        print(f"| {t} | {str(ring_dtype)[6:]} | {b} | {name} | OOM | | | |")
                        continue
                    print(f"| {t} | {str(ring_dtype)[6:]} | {b} | {name} | {ms:.3f} | {fl:.3f} | {ms / fl:.1f} | {errs.get(name, '-')} |", flush=True)
                del x, out, runs, pooled
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
