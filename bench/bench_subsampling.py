"""A steady streaming step of FastConformer-L's dw_striding subsampling: the PyTorch reference against the fused
path (``legato.kernels.dw_subsampling``), bf16, random weights, CUDA events (median of 20 after a warm-up).

Also the memory floors at 4.8 TB/s: ``floor``, what any implementation must move (mel in, the caches' read frame
and rewritten frames, the output); ``path``, what the fused path moves (its channels-last intermediates through
cuBLAS and the depthwise kernel included).
    python3 -P bench/bench_subsampling.py [--batches 256,4096,16384]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from bench_fastconformer import FULL  # noqa: E402
from common import floor_ms, time_steps  # noqa: E402

from legato.asr.fastconformer.subsampling import DwStridingSubsampling, freq_after  # noqa: E402
from legato.kernels.dw_subsampling import dw_subsampling_torch, dw_subsampling_triton  # noqa: E402

LOOKAHEAD = 2  # [70, 1]: 16 mel frames a step
WARMUP, ITERS = 5, 20
DTYPE = torch.bfloat16


def bytes_per_stream(chunk: int) -> tuple[int, int]:
    """(floor, path) bytes one stream's step moves in bf16 (weights, read once a step, left out)."""
    ch, d, stages = FULL.subsampling_conv_channels, FULL.d_model, FULL.subsampling_stages
    frames, caches = [chunk], 0
    for s in range(stages):
        frames.append(frames[-1] // 2)
        caches += 3 * freq_after(FULL.feat_in, s) * (1 if s == 0 else ch)  # read 1 frame, rewrite 2
    floor = chunk * FULL.feat_in + caches + frames[-1] * d
    path = floor + 2 * FULL.feat_in  # stage 1's cache rewritten from the mel after the kernel
    for s in range(2, stages + 1):
        act = frames[s] * freq_after(FULL.feat_in, s) * ch
        path += 4 * act  # depthwise out written, pointwise reads it and writes, the next stage (or out) reads that
    path += 2 * frames[-1] * freq_after(FULL.feat_in, stages) * ch  # the last ReLU, in place
    return 2 * floor, 2 * path


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="256,4096,16384")
    args = ap.parse_args()
    torch.manual_seed(0)
    sub = DwStridingSubsampling(FULL).cuda().to(DTYPE).eval()
    for p in sub.parameters():
        torch.nn.init.normal_(p, 0, 0.1)
    weights = sub._weights()
    chunk = FULL.chunk_mel(FULL.lookaheads[LOOKAHEAD])
    floor_b, path_b = bytes_per_stream(chunk)
    print(f"dw_striding steady step, FastConformer-L, {chunk} mel frames, {DTYPE}")
    print(f"{'B':>6} {'torch ms':>9} {'fused ms':>9} {'speedup':>8} {'floor ms':>9} {'path ms':>8}")
    for b in (int(x) for x in args.batches.split(",")):
        mel = torch.randn(b, chunk, FULL.feat_in, device="cuda", dtype=DTYPE)
        times = {}
        for name, fn in (("torch", dw_subsampling_torch), ("fused", dw_subsampling_triton)):
            contexts = [torch.zeros(s, device="cuda", dtype=DTYPE) for s in sub.context_shapes(b)]
            times[name] = statistics.median(time_steps(lambda: fn(mel, contexts, *weights), WARMUP, ITERS, cuda=True))
            del contexts
            torch.cuda.empty_cache()
        print(f"{b:>6} {times['torch']:>9.3f} {times['fused']:>9.3f} {times['torch'] / times['fused']:>7.2f}x "
              f"{floor_ms(b * floor_b):>9.3f} {floor_ms(b * path_b):>8.3f}")


if __name__ == "__main__":
    main()
