"""Engine overhead on the CPU: how many frames per second the scheduler itself moves.

Many streams push 10 ms feature chunks through a pipeline whose model is a
trivial running sum (microseconds of compute), so what is measured is the
engine: queues, batch formation, routing, metrics, thread hand-offs. Side by
side, the same frames through the same stage called directly in one loop (no
engine) give the floor. Reported: frames/s, and the real-time streams one
engine could carry at 10 ms per chunk if the model were free.

    python bench/bench_engine.py [--streams 1,16,256,1024] [--chunks 200] [--max-batch 64]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from streaming_toys import RunningSum  # noqa: E402

from legato.stream.engine import Engine  # noqa: E402
from legato.stream.frames import FeatureChunk  # noqa: E402
from legato.stream.graph import StreamInfo  # noqa: E402
from legato.stream.stages import ModelStage  # noqa: E402

CHUNK_S = 0.01  # one 10 ms feature frame per chunk
FEATURES = 80


def through_engine(streams: int, chunks: int, max_batch: int) -> float:
    stage = ModelStage(RunningSum(FEATURES), name="model", capacity=streams, max_batch=max_batch)
    x = torch.randn(1, FEATURES)
    with Engine(stage, max_streams=streams, queue_frames=64, output_frames=chunks + 2, default_budget_s=0.05) as engine:
        handles = [engine.open_stream() for _ in range(streams)]
        t0 = time.perf_counter()

        def feed(hs):
            for i in range(chunks):
                for h in hs:
                    h.push(FeatureChunk(x, i, 160, 16000))
            for h in hs:
                h.end()

        feeders = [threading.Thread(target=feed, args=(handles[k::4],)) for k in range(4)]
        for t in feeders:
            t.start()
        for h in handles:
            h.results(timeout=600)
        elapsed = time.perf_counter() - t0
        sizes = engine.metrics()["stages"]["model"]["batch_size"]
    return streams * chunks / elapsed, sizes.get("mean", 0.0)


def direct(streams: int, chunks: int, max_batch: int) -> float:
    stage = ModelStage(RunningSum(FEATURES), name="model", capacity=streams, max_batch=max_batch)
    ctxs = [stage.open(StreamInfo(str(i))) for i in range(streams)]
    x = torch.randn(1, FEATURES)
    t0 = time.perf_counter()
    for i in range(chunks):
        for lo in range(0, streams, max_batch):
            stage.process([(c, FeatureChunk(x, i, 160, 16000)) for c in ctxs[lo : lo + max_batch]])
    return streams * chunks / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1,16,256,1024")
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--max-batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'streams':>8} {'engine frames/s':>16} {'mean batch':>11} {'direct frames/s':>16} {'engine/direct':>14} {'rt streams':>11}")
    for n in (int(s) for s in args.streams.split(",")):
        chunks = max(20, args.chunks * 16 // max(n, 16))
        eng, mean_batch = through_engine(n, chunks, args.max_batch)
        dir_ = direct(n, chunks, args.max_batch)
        print(f"{n:>8} {eng:>16.0f} {mean_batch:>11.1f} {dir_:>16.0f} {eng / dir_:>13.2f}x {eng * CHUNK_S:>11.0f}")


if __name__ == "__main__":
    main()
