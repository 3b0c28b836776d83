"""Resampling speed on the CPU: legato vs scipy, librosa/soxr, offline and streaming.

Same input for every contender: seeded noise, 60 s at 44.1 kHz, mono, to
16 kHz. Offline: one call over the whole signal. Streaming: 20 ms chunks
(882 samples), the size a live client sends. legato uses the numba kernel
(and, for comparison, its plain torch reference). scipy.signal.resample_poly
is the numerical reference legato matches; soxr (libsoxr, what librosa uses
by default) is the fastest widely used resampler and has a streaming API.

    python bench/bench_resample.py [--seconds 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import scipy.signal
import soxr
import torch

from legato.stream.resample import Resampler

SOURCE, TARGET = 44100, 16000
CHUNK_SAMPLES = 882  # 20 ms at 44.1 kHz


def median_s(fn, repeats: int) -> float:
    fn()  # warm-up (JIT compile, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def legato_stream(r: Resampler, x: torch.Tensor) -> torch.Tensor:
    s = r.stream()
    out = [s.push(x[i : i + CHUNK_SAMPLES]) for i in range(0, x.shape[0], CHUNK_SAMPLES)]
    out.append(s.flush())
    return torch.cat(out)


def soxr_stream(x: np.ndarray) -> np.ndarray:
    s = soxr.ResampleStream(SOURCE, TARGET, 1, dtype="float32", quality="HQ")
    out = [s.resample_chunk(x[i : i + CHUNK_SAMPLES]) for i in range(0, x.shape[0], CHUNK_SAMPLES)]
    out.append(s.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n = int(SOURCE * args.seconds)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1)[:, None]
    xn = x[:, 0].numpy()
    r = Resampler(SOURCE, TARGET)
    ref = scipy.signal.resample_poly(xn.astype(np.float64), r.up, r.down)
    ours = r(x)[:, 0].numpy()
    err = np.abs(ours - ref).max()
    os.environ["LEGATO_KERNELS"] = "torch"
    ours_ref = r(x)[:, 0].numpy()
    t_torch = median_s(lambda: r(x), args.repeats)
    t_torch_stream = median_s(lambda: legato_stream(r, x), args.repeats)
    del os.environ["LEGATO_KERNELS"]
    rows = [
        ("legato offline (numba)", median_s(lambda: r(x), args.repeats)),
        ("legato offline (torch ref)", t_torch),
        ("scipy resample_poly", median_s(lambda: scipy.signal.resample_poly(xn, r.up, r.down), args.repeats)),
        ("soxr HQ offline", median_s(lambda: soxr.resample(xn, SOURCE, TARGET, quality="HQ"), args.repeats)),
        ("legato stream 20 ms (numba)", median_s(lambda: legato_stream(r, x), args.repeats)),
        ("legato stream 20 ms (torch ref)", t_torch_stream),
        ("soxr HQ stream 20 ms", median_s(lambda: soxr_stream(xn), args.repeats)),
    ]
    print(f"{args.seconds:.0f} s of 44.1 kHz mono -> 16 kHz, median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"max |legato - resample_poly| = {err:.2e}; numba vs torch ref = {np.abs(ours - ours_ref).max():.2e}")
    base = rows[2][1]
    print(f"{'contender':<34} {'seconds':>9} {'x realtime':>11} {'vs scipy':>9}")
    for name, t in rows:
        print(f"{name:<34} {t:>9.4f} {args.seconds / t:>11.0f} {base / t:>8.2f}x")


if __name__ == "__main__":
    main()
