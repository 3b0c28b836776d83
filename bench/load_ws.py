"""Load test through the real WebSocket server: N paced real-time client streams over loopback.

Starts ``legato serve`` as a subprocess (its own process and GIL, as in production), then opens N client
connections from this process. Each sends a speech clip in real time (``--chunk-ms`` pieces on a fixed
schedule, starts spread over one chunk period), then ``end``, and waits for the server's ``end``. Recorded:

* text latency, partials and finals apart: receive time minus the send time of the chunk holding the event's last
  word end (what a caption viewer waits, lookahead included; a final also waits for its endpoint);
* flush latency: ``end`` sent to ``end`` received;
* steady partial latency: the partials of chunks sent while every stream of the level was on (after the ramp,
  before the first end; use ``--seconds`` well above ``--ramp-s``);
* client lag: how late the sender ran against its schedule (when it grows past a chunk, this machine's clients,
  not the server, are the limit, and the figure is invalid);
* failures: connections refused, ``error`` messages, streams without ``end`` ("no audio lost" = none of these).

    python3 -P bench/load_ws.py --model fastconformer:tests/fixtures/nemo/rnnt_tiny.nemo --streams 16,64,256 \
        [--clip ../shared/testdata/speech/en_LDC93S1.wav] [--chunk-ms 160] [--seconds 10] [--out load_ws.json]
    python3 -P bench/load_ws.py --bulk --model fastconformer:tests/fixtures/nemo/ctc_tiny.nemo --streams 1024,4096 \
        --client-procs 8 --ramp-s 2 [--frontends 4]     # the bulk server; clients from 8 processes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import git_commit, pct  # noqa: E402

SAMPLE_RATE = 16000
DEFAULT_CLIP = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "speech" / "en_LDC93S1.wav"
READY_TIMEOUT_S = 120
STEADY_MARGIN_S = 0.5  # the steady window starts this long after the ramp and ends this long before the first end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clip_pcm(path: Path, seconds: float) -> bytes:
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    if rate != SAMPLE_RATE:
        raise SystemExit(f"{path}: {rate} Hz; use a 16 kHz clip")
    mono = audio[:, 0]
    reps = int(np.ceil(seconds * SAMPLE_RATE / len(mono)))
    return np.tile(mono, reps)[: int(seconds * SAMPLE_RATE)].astype("<i2").tobytes()


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-P", "-m", "legato.clients.cli", "serve", "--port", str(port), "--model", args.model,
           "--max-connections", str(max(int(n) for n in args.streams.split(",")) + 8), "--latency-budget", str(args.budget)]
    if args.bulk:
        cmd += ["--bulk", "--frontends", str(args.frontends)]
    if args.max_batch or not args.bulk:
        cmd += ["--max-batch", str(args.max_batch or 256)]
    # The server's log goes to a file: into a pipe nobody reads during the run, its per-connection lines filled the
    # 64 KB pipe buffer at about a thousand connections and the server blocked writing its log (every client then
    # timed out on keepalive pings: the connection drops of earlier load tests were this, not the server).
    log = open(args.server_log, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


SERVER_LOG_HINT = "--server-log (default load_ws_server.log)"


async def wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited; its log: {SERVER_LOG_HINT}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.5)
    raise SystemExit("server did not start listening")


async def one_stream(url: str, pcm: bytes, chunk_ms: int, offset_s: float, rec: dict, slack_s: float) -> None:
    """``slack_s``: a stream the server has not ended this long after its audio is failed ("TimeoutError")."""
    from websockets.asyncio.client import connect

    step = SAMPLE_RATE * chunk_ms // 1000 * 2  # bytes of s16le mono
    chunks = [pcm[i:i + step] for i in range(0, len(pcm), step)]
    sent: list[float] = []
    await asyncio.sleep(offset_s)
    try:
        # a stream the server never ends counts as failed instead of hanging the level
        async with asyncio.timeout(len(chunks) * chunk_ms / 1000 + slack_s), \
                connect(url, max_size=None, compression=None, open_timeout=60) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "s16le", "channels": 1}))

            async def send() -> None:
                t0 = time.monotonic()
                for k, chunk in enumerate(chunks):
                    due = t0 + k * chunk_ms / 1000
                    now = time.monotonic()
                    if due > now:
                        await asyncio.sleep(due - now)
                    rec["lag"].append(max(0.0, time.monotonic() - due))
                    await ws.send(chunk)
                    sent.append(time.monotonic())
                rec["end_sent"] = time.monotonic()
                await ws.send(json.dumps({"type": "end"}))

            sender = asyncio.create_task(send())
            async for raw in ws:
                msg, now = json.loads(raw), time.monotonic()
                kind = msg.get("type")
                if kind in ("partial", "final") and msg.get("end") is not None and msg.get("text"):
                    k = min(len(sent) - 1, int(msg["end"] * 1000 // chunk_ms))
                    if k >= 0:
                        rec[kind].append(now - sent[k])
                        if kind == "partial":
                            rec["partial_at"].append(sent[k])
                elif kind == "error":
                    rec["errors"].append(msg.get("code", "?"))
                    break
                elif kind == "end":
                    rec["flush"] = now - rec.get("end_sent", now)
                    rec["ended"] = True
                    break
            await sender
    except Exception as exc:  # noqa: BLE001 - a load test counts failures instead of stopping
        rec["errors"].append(f"{type(exc).__name__}: {exc}"[:200])


async def run_streams(port: int, first: int, count: int, n: int, pcm: bytes, chunk_ms: int, ramp_s: float,
                      slack_s: float) -> list[dict]:
    """Streams first .. first + count - 1 of a level of n, started evenly over ``ramp_s``."""
    recs = [{"lag": [], "partial": [], "partial_at": [], "final": [], "errors": [], "ended": False} for _ in range(count)]
    await asyncio.gather(*(one_stream(f"ws://127.0.0.1:{port}/", pcm, chunk_ms, ramp_s * (first + i) / n, r, slack_s)
                           for i, r in enumerate(recs)))
    return recs


def _client_process(job: tuple) -> list[dict]:
    return asyncio.run(run_streams(*job))


def run_level(port: int, n: int, pcm: bytes, chunk_ms: int, procs: int, ramp_s: float, slack_s: float) -> dict:
    """n paced streams from ``procs`` client processes (one asyncio loop each: one process's loop carries about a
    thousand paced streams)."""
    t0 = time.monotonic()
    if procs <= 1:
        recs = asyncio.run(run_streams(port, 0, n, n, pcm, chunk_ms, ramp_s, slack_s))
    else:
        bounds = np.linspace(0, n, procs + 1).astype(int)
        jobs = [(port, int(a), int(b - a), n, pcm, chunk_ms, ramp_s, slack_s) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            recs = [r for part in pool.map(_client_process, jobs) for r in part]
    wall = time.monotonic() - t0

    def dist(kind: str) -> dict | None:
        xs = [x * 1e3 for r in recs for x in r[kind]]
        return {"n": len(xs), "p50": statistics.median(xs), "p95": pct(xs, 95), "p99": pct(xs, 99), "max": max(xs)} if xs else None

    lag = [x * 1e3 for r in recs for x in r["lag"]]
    # steady state: partials of chunks sent once every stream had started and before any could end (the ramp's
    # opens and the level's ends, all within a few seconds here, are transients a long-running server spreads out)
    lo, hi = t0 + ramp_s + STEADY_MARGIN_S, t0 + len(pcm) / 2 / SAMPLE_RATE - STEADY_MARGIN_S
    steady = [x * 1e3 for r in recs for x, at in zip(r["partial"], r["partial_at"]) if lo <= at <= hi]
    flush = [r["flush"] * 1e3 for r in recs if "flush" in r]
    failures = sum(1 for r in recs if r["errors"] or not r["ended"])
    return {
        "streams": n, "client_processes": procs, "wall_s": wall, "failed_streams": failures,
        "errors": sorted({e for r in recs for e in r["errors"]})[:5],
        "partial_latency_ms": dist("partial"), "final_latency_ms": dist("final"),
        "steady_partial_latency_ms": {"n": len(steady), "p50": statistics.median(steady), "p99": pct(steady, 99),
                                      "window_s": hi - lo} if steady else None,
        "flush_ms": {"p50": statistics.median(flush), "p99": pct(flush, 99)} if flush else None,
        "client_lag_ms": {"p99": pct(lag, 99), "max": max(lag)} if lag else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="whisper-tiny.en", help="a legato serve --model spec")
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="16 kHz speech clip, looped to --seconds")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--chunk-ms", type=int, default=160)
    ap.add_argument("--max-batch", type=int, default=None, help="server --max-batch (default 256; the server's with --bulk)")
    ap.add_argument("--bulk", action="store_true", help="serve through the bulk path (legato serve --bulk; a CTC fastconformer model)")
    ap.add_argument("--frontends", type=int, default=1, help="with --bulk: the server's WebSocket front-end processes")
    ap.add_argument("--client-procs", type=int, default=1, help="client processes sharing each level's streams")
    ap.add_argument("--ramp-s", type=float, default=None, help="seconds over which a level's streams start (default one chunk)")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="a 4-stream warm-up level of this many seconds first "
                    "(the server compiles its kernels; not reported); 0: none")
    ap.add_argument("--stream-slack-s", type=float, default=90.0, help="a stream not ended this long after its audio "
                    "counts as failed (TimeoutError), so a stuck server cannot hang the test")
    ap.add_argument("--budget", type=float, default=0.1, help="server --latency-budget, seconds")
    ap.add_argument("--port", type=int, default=None, help="use a server already listening on this port (no spawn)")
    ap.add_argument("--server-log", default="load_ws_server.log", help="where the spawned server's output goes")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", default="load_ws.json")
    args = ap.parse_args()
    pcm = clip_pcm(args.clip, args.seconds)
    port = args.port or free_port()
    proc = None if args.port else start_server(args, port)
    rows = []
    try:
        if proc is not None:
            asyncio.run(wait_ready(port, proc))
        ramp = args.ramp_s if args.ramp_s is not None else args.chunk_ms / 1000
        if args.warmup_s > 0:
            run_level(port, 4, clip_pcm(args.clip, args.warmup_s), args.chunk_ms, 1, ramp, args.stream_slack_s)
        for n in (int(x) for x in args.streams.split(",")):
            print(f"# {n} streams from {args.client_procs} client processes ...", file=sys.stderr, flush=True)
            row = run_level(port, n, pcm, args.chunk_ms, args.client_procs, ramp, args.stream_slack_s)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    info = {"commit": args.commit or git_commit(), "model": args.model, "bulk": args.bulk, "frontends": args.frontends,
            "chunk_ms": args.chunk_ms, "seconds": args.seconds,
            "clip": str(args.clip), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    Path(args.out).write_text(json.dumps(info, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(r["failed_streams"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
