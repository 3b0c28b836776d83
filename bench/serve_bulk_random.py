"""``legato serve --bulk`` for a FastConformer-L-shaped model with random weights (issue 8's WebSocket load test at
scale), as no .nemo of that size is at hand: the model of bench_bulk (17 x 512, 8 heads, bf16 on CUDA) with the
tiny fixture's tokenizer and a CTC head of its size, served by ``BulkEngine`` (and ``--frontends`` processes) on a
port; ``bench/load_ws.py --port PORT`` then drives it. SIGTERM or Ctrl-C drains and stops.

    python3 -P bench/serve_bulk_random.py --port 8765 --capacity 20000 [--frontends 8] [--kv-cache fp8]
    python3 -P bench/serve_bulk_random.py --cpu-smoke --port 8765      # the tiny fixture model on the CPU
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
import bench_bulk  # noqa: E402

from legato.asr.fastconformer.recognizer import FastConformerRecognizer  # noqa: E402
from legato.server.bulk_engine import BulkEngine  # noqa: E402
from legato.server.frontends.links import start_frontends, stop_frontends  # noqa: E402
from legato.server.ws_server import ServerConfig, TranscriptionServer  # noqa: E402


async def serve(args) -> None:
    tokenizer = FastConformerRecognizer.from_nemo(bench_bulk.FIXTURE).tokenizer
    rec = bench_bulk.build(args, tokenizer)
    engine = BulkEngine("fastconformer:random-L", rec, capacity=args.capacity, max_batch=args.max_batch,
                        lookahead_ms=None if args.cpu_smoke else bench_bulk.LOOKAHEAD_MS, stats_every_s=args.stats_every or None,
                        graph_rows=args.graph_rows)
    config = ServerConfig(port=args.port, max_connections=args.capacity)
    await asyncio.get_running_loop().run_in_executor(None, engine.warm_up)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.frontends > 1:
        engine.start()
        frontends = await loop.run_in_executor(None, start_frontends, engine, args.frontends, config)
        print(f"serving on ws://127.0.0.1:{args.port} ({args.frontends} front ends)", flush=True)
        await stop.wait()
        await loop.run_in_executor(None, stop_frontends, frontends)
        engine.stop()
    else:
        server = await TranscriptionServer(engine, engine.routes, config).start()
        print(f"serving on {server.url}", flush=True)
        await stop.wait()
        await server.drain()
    print("stopped", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--capacity", type=int, default=20000)
    ap.add_argument("--max-batch", type=int, default=16384)
    ap.add_argument("--frontends", type=int, default=1)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--kv-cache", default="same", choices=["same", "fp8"])
    ap.add_argument("--stats-every", type=float, default=5.0, help="seconds between the worker's stats lines (0: none)")
    ap.add_argument("--graph-rows", type=int, default=4096, help="steps of up to this many rows replay CUDA graphs")
    ap.add_argument("--debug-graphs", action="store_true", help="log each graph capture's GPU memory")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if args.debug_graphs:
        logging.getLogger("legato.bulk").setLevel(logging.DEBUG)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
