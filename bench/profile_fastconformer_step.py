"""Where a FastConformer-L streaming step's GPU time goes (diagnostic for issue 8), ours only, random weights.

Per variant and batch: step p50 (CUDA events) and, for the largest batch, the top kernels by CUDA time from
``torch.profiler``. Variants: fp32 eager; bf16 autocast (what bench_fastconformer's --dtype bf16 measures);
bf16 weights and caches (no autocast); bf16 weights replayed from a CUDA graph.
    python3 -P bench/profile_fastconformer_step.py [--batches 256,4096] [--top 25] [--kinds bf16,graph]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from bench_fastconformer import FULL, EncoderStep  # noqa: E402
from common import time_steps  # noqa: E402

from legato.asr.fastconformer.encoder import FastConformerEncoder  # noqa: E402
from legato.stream.cuda_graphs import CapturedStep  # noqa: E402

LOOKAHEAD = 2  # [70, 1]: 160 ms chunks


def variant(enc, b, kind, mel):
    state = enc.init_state(b, "cuda")
    if kind == "graph":
        cap = CapturedStep(EncoderStep(enc, LOOKAHEAD), state, mel)
        return lambda: cap(mel)
    if kind == "autocast":
        def run():
            with torch.autocast("cuda", torch.bfloat16):
                return enc.stream_step(mel, state, lookahead=LOOKAHEAD, first=False)
        return run
    return lambda: enc.stream_step(mel, state, lookahead=LOOKAHEAD, first=False)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="256,4096")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--big", default="", help="extra batches for the bf16 and graph variants only")
    ap.add_argument("--ops", action="store_true", help="also list aten ops with input shapes by CUDA time (bf16 eager)")
    ap.add_argument("--kinds", default="fp32,autocast,bf16,graph", help="variants to run")
    args = ap.parse_args()
    torch.manual_seed(0)
    enc32 = FastConformerEncoder(FULL).cuda().eval()
    for p in enc32.parameters():
        torch.nn.init.normal_(p, 0, 0.02)
    enc16 = FastConformerEncoder(FULL).cuda().eval()
    enc16.load_state_dict(enc32.state_dict())
    enc16.to(torch.bfloat16)
    chunk = FULL.chunk_mel(FULL.lookaheads[LOOKAHEAD])
    batches = [int(x) for x in args.batches.split(",")]
    kinds = args.kinds.split(",")
    for kind, enc in (("fp32", enc32), ("autocast", enc32), ("bf16", enc16), ("graph", enc16)):
        if kind not in kinds:
            continue
        for b in batches + ([int(x) for x in args.big.split(",")] if args.big and kind in ("bf16", "graph") else []):
            dt = torch.bfloat16 if enc is enc16 else torch.float32
            mel = torch.randn(b, chunk, FULL.feat_in, device="cuda", dtype=dt)
            try:
                fn = variant(enc, b, kind, mel)
                times = time_steps(fn, 40, 20, True)  # 40 warm-up steps fill the 70-frame caches
            except Exception as exc:  # noqa: BLE001 - a diagnostic: report and go on
                print(f"{kind} B={b}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            p50 = sorted(times)[len(times) // 2]
            print(f"{kind} B={b}: p50 {p50:.2f} ms, real-time streams {b * 0.16 / (p50 / 1e3):.0f}", flush=True)
            if b == batches[-1] and kind in ("bf16", "graph"):
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        fn()
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=70), flush=True)
            if args.ops and b == batches[-1] and kind == "bf16":
                acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
                    fn()
                    torch.cuda.synchronize()
                print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=args.top,
                                                                         max_name_column_width=40, max_shapes_column_width=90), flush=True)
            del fn
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
