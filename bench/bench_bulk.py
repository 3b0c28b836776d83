"""Concurrent real-time streams through the bulk transcription path (issue 8's 40,000-stream target).

N streams, each sending one 160 ms chunk every 160 ms at its own phase (phases spread evenly over a chunk), are
driven into ``asr/fastconformer/bulk.BulkTranscriber`` by a producer thread (``push_many`` of the streams whose
chunk is due, as a front end gathering many streams' audio would hand it over); a worker thread steps whatever is
complete (oldest first, up to --max-batch): log-mel, encoder over the state pool, CTC greedy, tokens to the host.
Reported per N, after a warm-up: chunk latency (the time the chunk was due, i.e. its last sample's real-time
arrival, -> its tokens on the host: a late producer counts) p50 / p99 / max, mean batch, chunks due (real time),
pushed and stepped, whether the worker kept up (stepped >= 97 % of due, nothing refused) and refused pushes. Model: the
FastConformer-L shape of bench_fastconformer (17 x 512, 8 heads), a CTC head over 1,024 tokens, random weights.

    python3 -P bench/bench_bulk.py --streams 4096,16384,40000 --seconds 20 [--kv-cache fp8] [--dtype bf16]
    python3 -P bench/bench_bulk.py --cpu-smoke     # the tiny fixture model on the CPU, 32 streams
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from bench_fastconformer import FULL  # noqa: E402
from common import git_commit  # noqa: E402

from legato.asr.fastconformer.bulk import BulkTranscriber  # noqa: E402
from legato.asr.fastconformer.model import FastConformerModel, FastConformerModelConfig, HeadConfig  # noqa: E402
from legato.asr.fastconformer.recognizer import FastConformerRecognizer  # noqa: E402
from legato.asr.frontends.nemo_mel import NemoMelConfig  # noqa: E402
from legato.server.bulk_engine import BulkEngine  # noqa: E402

VOCAB = 1024
LOOKAHEAD_MS = 80  # right context 1 x 80 ms: 160 ms chunks
TICK_S = 0.002  # producer wake-up period
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nemo" / "ctc_tiny.nemo"


def build(args, tokenizer=None) -> FastConformerRecognizer:
    """The FastConformer-L shape on CUDA, random weights (the CTC head sized to ``tokenizer`` when one is given:
    a server turns tokens into words); the tiny fixture model with --cpu-smoke."""
    if args.cpu_smoke:
        return FastConformerRecognizer.from_nemo(FIXTURE)
    torch.manual_seed(0)
    vocab = tokenizer.vocab_size if tokenizer is not None else VOCAB
    cfg = FastConformerModelConfig(mel=NemoMelConfig(normalize="NA"), encoder=FULL, heads=HeadConfig("ctc", vocab))
    model = FastConformerModel(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, 0, 0.02)
    model = model.to("cuda", torch.bfloat16 if args.dtype == "bf16" else torch.float32).eval()
    if args.kv_cache == "fp8":
        model.encoder.kv_dtype = torch.float8_e4m3fn
    return FastConformerRecognizer(model, tokenizer, "bench")  # without a tokenizer tokens are not turned into words


class _Discard:
    """A stream handle for ``--engine``: the engine's per-step hand-over runs, its token updates go nowhere (words
    are built by the server's front ends, not on the stepping thread)."""

    def __init__(self, slot: int):
        self.slot = slot

    @staticmethod
    def sink(updates, handles) -> None:
        pass


def make_bulk(rec: FastConformerRecognizer, n: int, args):
    """The bulk path under test: ``BulkTranscriber`` alone, or (``--engine``) inside the server's ``BulkEngine``
    (its per-step endpointing and hand-over of token updates as arrays on the stepping thread)."""
    lookahead = None if args.cpu_smoke else LOOKAHEAD_MS
    if not args.engine:
        bulk = BulkTranscriber(rec, capacity=n, lookahead_ms=lookahead, max_batch=args.max_batch, cuda_graphs=not args.eager,
                               graph_rows=args.graph_rows, pipeline=not args.serial)
        return bulk, bulk.open_many(n)
    engine = BulkEngine("bench", rec, capacity=n, max_batch=args.max_batch, lookahead_ms=lookahead, graph_rows=args.graph_rows,
                        pipeline=not args.serial)
    engine.bulk.graphs = None if args.eager else engine.bulk.graphs
    slots = engine.bulk.open_many(n)
    for s in slots.tolist():
        engine.register(s, _Discard(s), {})
    return engine.bulk, slots


def run(rec: FastConformerRecognizer, n: int, args) -> dict:
    bulk, slots = make_bulk(rec, n, args)
    chunk_s = bulk.chunk / rec.sample_rate
    audio = (np.random.default_rng(0).standard_normal((n, bulk.chunk)) * 0.1).astype(np.float32)
    one = audio[:1]  # the timed streams all send this chunk (a broadcast view: the producer copies nothing itself)
    stop, stats = threading.Event(), {"pushed": 0, "refused": 0, "steps": 0, "rows": 0}

    def produce() -> None:
        start = time.monotonic()
        phase = np.arange(n) / n * chunk_s
        sent = np.zeros(n, np.int64)
        while not stop.is_set():
            now = time.monotonic() - start
            due = np.flatnonzero(phase + (sent + 1) * chunk_s <= now)  # chunk k is complete at phase + (k+1) chunk
            if len(due):
                # latency counts from when the chunk was due, so a producer running late shows in it
                arrived = start + phase[due] + (sent[due] + 1) * chunk_s
                stats["refused"] += int(bulk.push_many(slots[due], np.broadcast_to(one, (len(due), bulk.chunk)), arrived).sum())
                sent[due] += 1
                stats["pushed"] += len(due)
            time.sleep(TICK_S)

    def work() -> None:
        while not stop.is_set():
            rows = bulk.step()
            stats["steps"] += rows > 0
            stats["rows"] += rows
            if not rows:
                time.sleep(0.0005)

    for _ in range(2):  # kernels compiled, every stream's first step and one steady step before the clock starts
        bulk.push_many(slots, audio)
        while bulk.step():
            pass
    if bulk.graphs is not None:  # every steady bucket before the clock: a capture in the timed window stalls all
        bulk.graphs.capture_all(phases=(False,))
    threads = [threading.Thread(target=produce, daemon=True), threading.Thread(target=work, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(args.warmup)  # the phases settle
    bulk.latencies(clear=True)
    bulk.windows.read()
    for key in stats:
        stats[key] = 0
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    lat = bulk.latencies() * 1e3
    phases = bulk.windows.read().phases_ms()
    due = round(n * args.seconds / chunk_s)  # what real-time streams bring in the timed window
    return {
        "streams": n, "chunks_due": due, "chunks_pushed": stats["pushed"], "chunks_stepped": stats["rows"],
        "refused_pushes": stats["refused"], "steps": stats["steps"], "mean_batch": stats["rows"] / max(stats["steps"], 1),
        "kept_up": stats["refused"] == 0 and stats["rows"] >= 0.97 * due,
        "phases_ms": phases,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "max": float(lat.max())} if len(lat) else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1024,4096,16384")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=16384)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--kv-cache", default="same", choices=["same", "fp8"])
    ap.add_argument("--graph-rows", type=int, default=16384,
                    help="steps of up to this many rows replay CUDA graphs (eager above), the steady ones captured before the clock")
    ap.add_argument("--serial", action="store_true",
                    help="no pipelining: each step completes before the next one's host work (the default before 2026-11-29)")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs (each step launches its kernels from Python)")
    ap.add_argument("--engine", action="store_true", help="through the server's BulkEngine (endpointing and token "
                    "hand-over per step) instead of BulkTranscriber alone")
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", default="bench_bulk.json")
    args = ap.parse_args()
    if args.cpu_smoke:  # --streams may still be given
        args.seconds, args.warmup, args.dtype = 3.0, 1.0, "fp32"
        args.streams = "32" if args.streams == ap.get_default("streams") else args.streams
    tokenizer = FastConformerRecognizer.from_nemo(FIXTURE).tokenizer if args.engine and not args.cpu_smoke else None
    rec = build(args, tokenizer)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.cpu_smoke else "cpu"
    print(f"{gpu}  torch {torch.__version__}  {args.dtype}  kv {args.kv_cache}  {'eager' if args.eager else 'CUDA graphs'}  "
          f"{'BulkEngine' if args.engine else 'BulkTranscriber'}  commit {args.commit or git_commit()}")
    print("| streams | chunks due / pushed / stepped | mean batch | latency p50 / p99 / max ms | kept up | refused pushes "
          "| stepping thread ms a step: take / launch / wait / finish / ends |")
    print("|---:|---:|---:|---:|---|---:|---|")
    rows = []
    for n in (int(x) for x in args.streams.split(",")):
        try:
            r = run(rec, n, args)
        except torch.OutOfMemoryError as exc:
            print(f"| {n} | OOM: {str(exc)[:80]} | | | | | |", flush=True)
            gc.collect()
            torch.cuda.empty_cache()
            continue
        lat = r["latency_ms"] or {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
        print(f"| {n} | {r['chunks_due']} / {r['chunks_pushed']} / {r['chunks_stepped']} | {r['mean_batch']:.0f} | {lat['p50']:.1f} / {lat['p99']:.1f} / "
              f"{lat['max']:.1f} | {'yes' if r['kept_up'] else 'no'} | {r['refused_pushes']} | "
              f"{' / '.join(f'{v:.1f}' for v in r['phases_ms'].values())} |", flush=True)
        rows.append(r)
        gc.collect()  # the engine's hooks make cycles: the last level's pool (tens of GB) goes before the next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps({"gpu": gpu, "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
