"""Helpers shared by the benchmarks: per-step times (CUDA events on GPU), nearest-rank percentiles, TF32 on/off
for a block, and the commit being measured.

Benchmarks run as ``python3 -P bench/NAME.py`` (the script's folder is not on ``sys.path`` then), so each puts
``bench/`` on the path before importing this module.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch


def time_steps(fn: Callable[[], object], warmup: int, iters: int, cuda: bool) -> list[float]:
    """Milliseconds of each of ``iters`` steps after ``warmup`` untimed ones, each step timed alone."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (with 50 samples p99 is the slowest)."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 matmuls and convolutions on (or off) inside the block, restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def git_commit() -> str | None:
    """The checkout's HEAD, or None (the device machine has no git)."""
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10, check=False)
        return (r.stdout.strip() or None) if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


HBM_BYTES_PER_S = 4.8e12  # H200: the memory floors of the kernel benches


def floor_ms(bytes_moved: float) -> float:
    """Milliseconds to move ``bytes_moved`` at HBM bandwidth."""
    return bytes_moved / HBM_BYTES_PER_S * 1e3


def kernel_bench_streams(doc: str, default: str = "4096,16384") -> list[int]:
    """The stream counts of a kernel bench (``--streams``), its CUDA device and torch printed first."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--streams", default=default)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    return [int(s) for s in args.streams.split(",")]
