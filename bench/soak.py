"""Soak test: paced WebSocket streams beyond the server's capacity for minutes; nothing lost, nothing leaks.

Starts ``legato serve`` (its own process, as in production) and keeps ``--clients`` client loops going for
``--seconds``. Each loop connects, streams a speech clip in real time (``--chunk-ms`` pieces), sends ``end`` and reads
to the server's ``end``, then starts again with the next clip. More loops than ``--max-connections``: the surplus is
refused at the handshake (HTTP 503) and retries after ``--retry-s``. The server's shared 2-core machine cannot keep up
with all admitted streams at once, so they are back-pressured: slowed, never closed.

Checked, per stream that was admitted:
- it ends with the server's ``end`` (no close without it, no ``error``): "lost" counts the others;
- its finals equal the finals of the same clip streamed alone before the soak (Whisper's transcript does not depend
  on timing or chunking: asr/whisper/streaming.py), "mismatched" counts the others.
And the server's resident memory (VmRSS) every ``--rss-every`` seconds: after the warm-up (the first quarter of the
run, when caches and allocator pools fill), growth from there to the end (medians of the first and last thirds of the
samples) must stay under ``--max-rss-growth``.

    .venv/bin/python -P bench/soak.py --seconds 600 --out soak.json          # the 10-minute run (docs/PERFORMANCE.md)
    .venv/bin/python -P bench/soak.py --seconds 60                           # the CI version (tests/test_soak.py)

Exit status 1 when a stream was lost or mismatched or memory grew past the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import git_commit  # noqa: E402
from load_ws import free_port, wait_ready  # noqa: E402

SAMPLE_RATE = 16000
SPEECH = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "speech"
CLIPS = ["en_LDC93S1.wav", "en_goforward.wav", "en_mr_quilter.wav", "en_cards_002.wav"]
STREAM_TIMEOUT_S = 120  # an admitted stream not ended this long after its audio counts as lost


def load_clip(path: Path) -> bytes:
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    if rate != SAMPLE_RATE:
        raise SystemExit(f"{path}: {rate} Hz; the soak sends 16 kHz clips")
    return audio[:, 0].astype("<i2").tobytes()


async def one_stream(url: str, pcm: bytes, chunk_ms: int, paced: bool = True) -> dict:
    """One stream: {"admitted", "ended", "finals", "error", "seconds"}."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    step = SAMPLE_RATE * chunk_ms // 1000 * 2
    rec = {"admitted": False, "ended": False, "finals": [], "error": None, "seconds": 0.0}
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(len(pcm) / 2 / SAMPLE_RATE + STREAM_TIMEOUT_S), \
                connect(url, max_size=None, compression=None, open_timeout=30) as ws:
            rec["admitted"] = True
            await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "s16le", "channels": 1}))

            async def send() -> None:
                start = time.monotonic()
                for k, i in enumerate(range(0, len(pcm), step)):
                    if paced:
                        await asyncio.sleep(max(0.0, start + k * chunk_ms / 1000 - time.monotonic()))
                    await ws.send(pcm[i:i + step])
                await ws.send(json.dumps({"type": "end"}))

            sender = asyncio.create_task(send())
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "final":
                    rec["finals"].append(msg["text"])
                elif msg["type"] == "error":
                    rec["error"] = msg.get("code", "?")
                    break
                elif msg["type"] == "end":
                    rec["ended"] = True
                    break
            sender.cancel()
    except InvalidStatus as exc:
        rec["error"] = f"http {exc.response.status_code}"
    except Exception as exc:  # noqa: BLE001 - a soak counts failures instead of stopping
        rec["error"] = f"{type(exc).__name__}: {exc}"[:200]
    rec["seconds"] = time.monotonic() - t0
    return rec


async def client_loop(url: str, clips: list[bytes], want: list[list[str]], args, stop_at: float, tally: dict, k: int) -> None:
    """Stream clip after clip until ``stop_at``; a refused connection retries after ``--retry-s``."""
    i = k
    while time.monotonic() < stop_at:
        c = i % len(clips)
        rec = await one_stream(url, clips[c], args.chunk_ms)
        if not rec["admitted"]:
            tally["refused"] += 1
            if rec["error"] not in ("http 503",):
                tally["refused_other"].append(rec["error"])
            await asyncio.sleep(args.retry_s)
            continue
        i += 1
        tally["admitted"] += 1
        tally["stream_s"].append(rec["seconds"])
        if not rec["ended"]:
            tally["lost"] += 1
            tally["lost_why"].append(rec["error"])
        elif rec["finals"] != want[c]:
            tally["mismatched"] += 1
            tally["mismatch_examples"].append({"clip": CLIPS[c], "got": rec["finals"], "want": want[c]})
        else:
            tally["ok"] += 1


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(args, port: int, pid: int) -> dict:
    url = f"ws://127.0.0.1:{port}/"
    clips = [load_clip(args.speech_dir / name) for name in CLIPS]
    want = []
    for pcm in clips:  # each clip alone, paced, before the load: the finals every loaded stream must reproduce
        rec = await one_stream(url, pcm, args.chunk_ms)
        if not rec["ended"]:
            raise SystemExit(f"a lone stream did not end: {rec['error']}")
        want.append(rec["finals"])
    tally = {"refused": 0, "refused_other": [], "admitted": 0, "ok": 0, "lost": 0, "lost_why": [], "mismatched": 0,
             "mismatch_examples": [], "stream_s": []}
    t0 = time.monotonic()
    stop_at = t0 + args.seconds
    rss: list[tuple[float, float]] = []

    async def sample() -> None:
        while time.monotonic() < stop_at:
            rss.append((time.monotonic() - t0, rss_mib(pid)))
            done = tally["admitted"]
            print(f"  t={rss[-1][0]:6.0f} s  rss {rss[-1][1]:7.1f} MiB  streams done {done}  refused {tally['refused']}  "
                  f"lost {tally['lost']}  mismatched {tally['mismatched']}", file=sys.stderr, flush=True)
            await asyncio.sleep(args.rss_every)

    sampler = asyncio.create_task(sample())
    # client starts spread over a chunk period each, so connections do not all arrive in one instant
    await asyncio.gather(*(start_later(k * args.chunk_ms / 1000, client_loop(url, clips, want, args, stop_at, tally, k))
                           for k in range(args.clients)))
    rss.append((time.monotonic() - t0, rss_mib(pid)))
    sampler.cancel()
    # RSS swings by a step's transient tensors (tens of MiB): compare the medians of the first and last thirds after
    # the warm-up, not single samples
    warm = [m for t, m in rss if t >= args.seconds * 0.25]
    third = max(1, len(warm) // 3)
    base, mid, end = (statistics.median(part) for part in (warm[:third], warm[third:-third] or warm, warm[-third:]))
    growth = (end - base) / base
    durations = tally.pop("stream_s")
    return {
        **tally, "want": want, "wall_s": time.monotonic() - t0,
        "rss_mib": {"first": rss[0][1], "after_warmup": base, "middle": mid, "end": end, "growth_after_warmup": growth,
                    "samples": rss},
        "stream_s": {"p50": statistics.median(durations), "max": max(durations)} if durations else None,
    }


async def start_later(delay: float, coro) -> None:
    await asyncio.sleep(delay)
    await coro


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="how long the load runs (default 600)")
    ap.add_argument("--model", default="whisper-tiny.en", help="a legato serve --model spec")
    ap.add_argument("--max-connections", type=int, default=6, help="the server's stream limit (default 6: beyond what "
                    "the 2-core machine transcribes in real time, so admitted streams are back-pressured)")
    ap.add_argument("--clients", type=int, default=10, help="client loops, more than --max-connections (default 10)")
    ap.add_argument("--chunk-ms", type=int, default=100)
    ap.add_argument("--retry-s", type=float, default=1.0, help="a refused client waits this long before retrying")
    ap.add_argument("--rss-every", type=float, default=10.0, help="seconds between the server's memory samples")
    ap.add_argument("--max-rss-growth", type=float, default=0.05, help="bound on memory growth after the warm-up (5 %%)")
    ap.add_argument("--speech-dir", type=Path, default=SPEECH, help=f"the test clips (default {SPEECH})")
    ap.add_argument("--server-log", default="soak_server.log")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", default="soak.json")
    args = ap.parse_args()
    port = free_port()
    cmd = [sys.executable, "-P", "-m", "legato.clients.cli", "serve", "--port", str(port), "--no-tts", "--model", args.model,
           "--max-connections", str(args.max_connections)]
    with open(args.server_log, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        asyncio.run(wait_ready(port, proc))
        result = asyncio.run(soak(args, port, proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    passed = result["lost"] == 0 and result["mismatched"] == 0 and result["rss_mib"]["growth_after_warmup"] < args.max_rss_growth \
        and result["ok"] > 0 and not result["refused_other"]
    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": args.commit or git_commit(), "cpus": os.cpu_count(),
            "args": vars(args), "passed": passed, **result}
    Path(args.out).write_text(json.dumps(info, indent=1, default=str))
    r = result["rss_mib"]
    print(f"{args.seconds:.0f} s, {args.clients} clients on {args.max_connections} connections: {result['admitted']} streams admitted, "
          f"{result['ok']} ok, {result['lost']} lost, {result['mismatched']} mismatched, {result['refused']} refused at the handshake; "
          f"RSS {r['first']:.0f} -> {r['after_warmup']:.0f} (after warm-up) -> {r['middle']:.0f} -> {r['end']:.0f} MiB "
          f"({100 * r['growth_after_warmup']:+.1f} %); stream time p50 {result['stream_s']['p50']:.1f} s, max {result['stream_s']['max']:.1f} s"
          if result["stream_s"] else "no stream completed")
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
