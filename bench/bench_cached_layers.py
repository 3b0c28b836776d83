"""Cached-layer step latency on one GPU: eager PyTorch vs CUDA-graph replay.

One step = every stream in the batch advances by one chunk through a
ring-KV-cache relative-position attention layer (FastConformer shape: d_model
512, 8 heads, 70 frames of left context, chunk 2 frames = 160 ms lookahead
after 8x subsampling) followed by the causal depthwise conv (kernel 9).
Correctness first (graph replay equals eager), then timing with CUDA events,
warm-up, and the median of many steps.

    python bench/bench_cached_layers.py [--batches 1,16,64,256,1024] [--dtype float32|bfloat16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from legato.stream.cuda_graphs import CapturedStep
from legato.stream.layers import CachedAttention, CausalConv1d
from legato.stream.module import StreamingModule
from legato.stream.state import StackedState

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import time_steps  # noqa: E402

D_MODEL, HEADS, LEFT, CHUNK, CONV_KERNEL = 512, 8, 70, 2, 9


class Block(StreamingModule):
    """Attention then depthwise conv, each with its cache (the streaming core of a conformer layer)."""

    time_axis = 1

    def __init__(self):
        super().__init__()
        self.att = CachedAttention(D_MODEL, HEADS, left_context=LEFT, causal=False, chunk_size=CHUNK, position="relative")
        self.conv = CausalConv1d(D_MODEL, D_MODEL, CONV_KERNEL, groups=D_MODEL)

    def init_state(self, batch_size, device=None):
        return StackedState((self.att.init_state(batch_size, device), self.conv.init_state(batch_size, device)))

    def step(self, x, state):
        a, c = state.children
        x = x + self.att.step(x, a)
        return x + self.conv.step(x.transpose(1, 2), c).transpose(1, 2)


def time_ms(fn, warmup=10, iters=50) -> float:
    return statistics.median(time_steps(fn, warmup, iters, cuda=True))


def run(batch: int, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    block = Block().cuda().to(dtype).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.02)
    with torch.no_grad():
        state = block.init_state(batch, "cuda")
        xs = [torch.randn(batch, CHUNK, D_MODEL, device="cuda", dtype=dtype) for _ in range(8)]
        # Advance the cache so the ring is full, as in steady state.
        for i in range(LEFT // CHUNK + 1):
            block.step(xs[i % 8], state)
        saved = state.clone()
        captured = CapturedStep(block, state, xs[0])
        # Correctness: 6 replayed steps equal 6 eager steps from the same state.
        eager_state = saved.clone()
        worst = 0.0
        for i in range(6):
            y = captured(xs[i])
            ref = block.step(xs[i], eager_state)
            rel = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            worst = max(worst, rel)
        eager_ms = time_ms(lambda: block.step(xs[0], eager_state))
        graph_ms = time_ms(captured.graph.replay)
    chunk_s = CHUNK * 0.08  # one encoder frame = 80 ms of audio
    return {
        "batch": batch,
        "dtype": str(dtype).replace("torch.", ""),
        "max_rel_err_graph_vs_eager": worst,
        "eager_ms": eager_ms,
        "graph_ms": graph_ms,
        "speedup": eager_ms / graph_ms,
        "realtime_streams_graph": batch * chunk_s / (graph_ms / 1e3),
        "state_mib_per_stream": saved.nbytes() / batch / 2**20,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,16,64,256,1024")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    rows = [run(int(b), getattr(torch, args.dtype)) for b in args.batches.split(",")]
    print(f"GPU {torch.cuda.get_device_name()}  torch {torch.__version__}  {time.strftime('%Y-%m-%d')}")
    print(f"{'batch':>6} {'dtype':>9} {'eager ms':>9} {'graph ms':>9} {'x':>6} {'rt streams/layer':>17} {'err':>9}")
    for r in rows:
        print(f"{r['batch']:>6} {r['dtype']:>9} {r['eager_ms']:>9.3f} {r['graph_ms']:>9.3f} {r['speedup']:>6.2f} {r['realtime_streams_graph']:>17.0f} {r['max_rel_err_graph_vs_eager']:>9.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
