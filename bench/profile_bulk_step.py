"""Where one bulk-path step's time goes: torch.profiler over one ``BulkTranscriber.step`` of N streams (issue 8).

The FastConformer-L shape of bench_bulk (random weights, bf16, CTC over 1,024 tokens), N streams opened, each pushed
one 160 ms chunk per step; three steps first (the first compiles the kernels and is the streams' first step), then
the fourth is profiled. Prints the warm steps' wall times and the profiler's table by CUDA time.

    python3 -P bench/profile_bulk_step.py [--streams 16384] [--kv-cache same|fp8] [--top 22] [--shapes]
    python3 -P bench/profile_bulk_step.py --streams 3000 --flush   # instead: the end of every stream at once
                                                                     # (bulk_flush: masked eager steps)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
import bench_bulk  # noqa: E402

from legato.asr.fastconformer.bulk import BulkTranscriber  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=16384)
    ap.add_argument("--kv-cache", default="same", choices=["same", "fp8"])
    ap.add_argument("--top", type=int, default=22)
    ap.add_argument("--shapes", action="store_true", help="also the table grouped by input shapes (where copies come from)")
    ap.add_argument("--flush", action="store_true", help="profile the streams' ends (each ended with a third of a chunk "
                    "left) flushed in one call, as a server's wave of ends, instead of a steady step")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    rec = bench_bulk.build(argparse.Namespace(cpu_smoke=False, dtype="bf16", kv_cache=args.kv_cache))
    n = args.streams
    bulk = BulkTranscriber(rec, capacity=n, lookahead_ms=bench_bulk.LOOKAHEAD_MS, max_batch=n, cuda_graphs=False)  # ops, not a replay
    slots = bulk.open_many(n)
    audio = (np.random.default_rng(0).standard_normal((n, bulk.chunk)) * 0.1).astype(np.float32)
    for k in range(3):
        bulk.push_many(slots, audio)
        torch.cuda.synchronize()
        t = time.perf_counter()
        bulk.step()
        torch.cuda.synchronize()
        print(f"step {k}: {(time.perf_counter() - t) * 1e3:.1f} ms", flush=True)
    if args.flush:
        for s in slots.tolist():
            bulk.push(s, audio[0, : bulk.chunk // 3])
            bulk.end(s)
    else:
        bulk.push_many(slots, audio)
    t = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
                                record_shapes=args.shapes) as prof:
        bulk.step()  # with --flush: no chunk is complete, so the idle call flushes every ended stream
        torch.cuda.synchronize()
    print(f"profiled {'flush' if args.flush else 'step'}: {(time.perf_counter() - t) * 1e3:.1f} ms (profiler on)", flush=True)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=45))
    if args.shapes:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=args.top,
                                                                  max_name_column_width=30, max_shapes_column_width=70))


if __name__ == "__main__":
    main()
