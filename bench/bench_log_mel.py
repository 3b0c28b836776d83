"""NeMo's log-mel spectral step for many streams at once: the PyTorch path (window, pad, rfft, abs, square, mel
matmul, add, log: about eight launches) against the fused Triton kernel (kernels/log_mel.py, one launch), issue 8.

Each stream brings one 160 ms chunk: 16 frames of 400 samples cut (strided, not copied) from its 2,800 buffered
samples. The kernel runs at fp32 ("ieee", the default) and "tf32x3" (three TF32 tensor-core products); each is
first compared with the reference (max |ln mel| difference), then timed (CUDA events, median of 20 after 5
warm-ups). Floors: the kernel's useful FLOPs (folded DFT 2 x 201 x 256 and 256 x 80 mel, 2 FLOPs a multiply-add)
at the fp32 peak (67 TFLOP/s) or a third of the TF32 peak (495 / 3); bytes (each stream's samples read once, the
log-mels written once) at 4.8 TB/s.
    python3 -P bench/bench_log_mel.py [--streams 256,4096,40960]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import time_steps  # noqa: E402

from legato.asr.frontends.nemo_mel import NemoMel, NemoMelConfig  # noqa: E402
from legato.kernels import log_mel  # noqa: E402

FRAMES = 16  # one 160 ms chunk
HOP, WINDOW = 160, 400
BUFFERED = (FRAMES - 1) * HOP + WINDOW  # 2,800 samples per stream
FP32_FLOPS = 67e12  # H200, non-tensor fp32
TF32X3_FLOPS = 495e12 / 3  # H200 dense TF32, three products per fp32 product
HBM_BYTES_PER_S = 4.8e12
WARMUP, ITERS = 5, 20


def useful_flops(frames: int, module: NemoMel) -> float:
    folded, bins = module.dft_cos.shape
    return frames * 2 * (2 * folded * bins + bins * module.config.n_mels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="256,4096,40960")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    module = NemoMel(NemoMelConfig(normalize="NA")).cuda()
    c = module.config
    consts = (module.window, module.filters, module.dft_cos, module.dft_sin, c.n_fft, module.fft_offset, c.log_zero_guard)
    print(f"{'streams':>8} {'frames':>7} {'torch ms':>9} {'ieee ms':>8} {'x':>5} {'tf32x3 ms':>9} {'x':>5} "
          f"{'fp32 floor':>10} {'tf32x3 floor':>12} {'HBM floor':>9} {'err ieee':>9} {'err tf32x3':>10}")
    for streams in (int(s) for s in args.streams.split(",")):
        g = torch.Generator(device="cuda").manual_seed(streams)
        buffered = 0.1 * torch.randn(streams, BUFFERED, device="cuda", generator=g)
        frames = buffered.unfold(1, WINDOW, HOP)  # (streams, 16, 400) strided view, as the framer cuts them
        run = {
            "torch": lambda: log_mel.log_mel_torch(frames, *consts),
            "ieee": lambda: log_mel.log_mel_triton(frames, *consts, precision="ieee"),
            "tf32x3": lambda: log_mel.log_mel_triton(frames, *consts, precision="tf32x3"),
        }
        ref = run["torch"]()
        err = {k: float((run[k]() - ref).abs().max()) for k in ("ieee", "tf32x3")}
        ms = {k: statistics.median(time_steps(fn, WARMUP, ITERS, cuda=True)) for k, fn in run.items()}
        n = streams * FRAMES
        flops = useful_flops(n, module)
        moved = streams * (BUFFERED + FRAMES * c.n_mels) * 4
        print(f"{streams:>8} {n:>7} {ms['torch']:>9.3f} {ms['ieee']:>8.3f} {ms['torch'] / ms['ieee']:>5.2f} "
              f"{ms['tf32x3']:>9.3f} {ms['torch'] / ms['tf32x3']:>5.2f} {flops / FP32_FLOPS * 1e3:>10.3f} "
              f"{flops / TF32X3_FLOPS * 1e3:>12.3f} {moved / HBM_BYTES_PER_S * 1e3:>9.3f} {err['ieee']:>9.1e} {err['tf32x3']:>10.1e}")


if __name__ == "__main__":
    main()
