"""``legato serve``: the live-transcription WebSocket server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve live transcription over WebSocket and text-to-speech over gRPC",
        description="Start the live-transcription WebSocket server (protocol: docs/PROTOCOL.md) and the text-to-speech "
        "gRPC service (docs/TTS.md; the embedded voice 'joe' unless --voices names others; --no-tts for none). "
        "One engine serves every model and voice (one worker per device schedules all their work, batched across streams); SIGTERM or Ctrl-C drains: in-flight streams get their finals.",
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    net.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    net.add_argument("--certfile", help="TLS certificate (PEM); serves wss:// with --keyfile")
    net.add_argument("--keyfile", help="TLS private key (PEM)")
    net.add_argument("--auth-token-file", help="file holding a bearer token clients must send (Authorization header)")
    model = p.add_argument_group("model")
    model.add_argument("--model", action="append", dest="models", metavar="SPEC",
                       help="model to load, repeatable: whisper-tiny.en (default, embedded), whisper-ct2:FOLDER or "
                       "whisper-openai:FILE.pt[,TOKENIZER.json] or fastconformer:FILE.nemo (NeMo cache-aware CTC/RNNT/hybrid) or "
                       "paraformer:FOLDER (FunASR streaming or offline) or paraformer-2pass:STREAMING_FOLDER,OFFLINE_FOLDER; "
                       "the first is the default")
    model.add_argument("--precision", choices=["fp32", "bf16"], help="FastConformer weights and activations: fp32 "
                       "(default; matches NeMo to 1e-5) or bf16 (about 3x faster on a GPU at thousands of streams)")
    model.add_argument("--kv-cache", choices=["model", "fp8"], help="FastConformer attention cache: the model's dtype "
                       "(default) or fp8 e4m3 (half the memory per stream: about twice the streams per GPU)")
    model.add_argument("--bulk", action="store_true", help="serve one fastconformer:FILE.nemo model through the bulk path "
                       "(thousands of streams per GPU; one lookahead and one decoder; server/bulk_engine.py) "
                       "instead of the general engine")
    model.add_argument("--lookahead-ms", type=int, help="--bulk: the one lookahead served (default: the model's first)")
    model.add_argument("--frontends", type=int, default=1, help="--bulk: WebSocket front-end processes sharing the port "
                       "(one event loop carries a thousand or two paced streams; the model stays in this process)")
    model.add_argument("--stats-every", type=float, default=10.0, metavar="SECONDS", help="--bulk: log what the GPU "
                       "worker did this often (streams, chunks/s, batch sizes, its busy share, step and chunk-latency "
                       "quantiles; with --frontends also each front end's loop lag); 0: never (default 10)")
    model.add_argument("--decoder", choices=["ctc", "rnnt"], help="--bulk: the one decoder served (default: the model's "
                       "own, RNNT for hybrids; CTC is the faster at scale)")
    model.add_argument("--graph-rows", type=int, default=BULK_GRAPH_ROWS, help="--bulk: CUDA graphs are captured for "
                       f"steps of up to this many streams (default {BULK_GRAPH_ROWS}; larger steps replay them on pieces). "
                       "16384 carries the most streams (measured: 40,000 at p99 34 ms on an H200) but its graphs "
                       "need more GPU memory and warm-up time")
    tts = p.add_argument_group("text-to-speech (gRPC, docs/TTS.md)")
    tts.add_argument("--voices", metavar="FILE", help="voices YAML (docs/TTS.md): serve these voices instead of the "
                     "embedded one (joe: Piper en_US-joe-medium)")
    tts.add_argument("--grpc-port", type=int, default=50051, help="gRPC port for the TTS service (default 50051)")
    tts.add_argument("--no-tts", action="store_true", help="serve only live transcription: no gRPC TTS service, no voice loaded")
    tts.add_argument("--no-asr", action="store_true", help="serve only TTS: no WebSocket transcription server, no ASR model")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-connections", type=int, default=64, help="concurrent streams; more get HTTP 503 (default 64)")
    limits.add_argument("--max-message-bytes", type=int, default=1 << 20, help="largest audio message (default 1 MiB)")
    limits.add_argument("--idle-timeout", type=float, default=30.0, help="seconds without a client message before the stream is closed (default 30)")
    limits.add_argument("--latency-budget", type=float, default=1.0, help="per-stream latency budget for batching, seconds (default 1.0)")
    limits.add_argument("--max-audio-rate", type=float, default=16.0, metavar="X", help="a stream may send audio at most X "
                        "times real time once its burst is spent; faster senders are read more slowly, never closed "
                        "(default 16; 0: no limit)")
    limits.add_argument("--max-audio-burst", type=float, default=60.0, metavar="SECONDS", help="seconds of audio a stream "
                        "may send at once before --max-audio-rate applies (default 60)")
    limits.add_argument("--max-connections-per-client", type=int, default=0, metavar="N", help="streams one client IP "
                        "address may hold; more get HTTP 429 (default 0: no limit, as behind a proxy every client "
                        "has the proxy's address)")
    limits.add_argument("--max-batch", type=int, help=f"streams per model step (default {GENERAL_MAX_BATCH}; "
                        f"{BULK_MAX_BATCH} with --bulk)")
    p.set_defaults(func=run)


GENERAL_MAX_BATCH = 8
BULK_MAX_BATCH = 16384
BULK_GRAPH_ROWS = 4096  # bulk_graphs.MAX_GRAPH_ROWS (a test checks they agree; not imported: --help stays light)


def client_limits(args: argparse.Namespace) -> dict:
    """The per-client limits of ServerConfig (server/rate_limit.py)."""
    return {"max_audio_rate": args.max_audio_rate, "max_audio_burst_s": args.max_audio_burst,
            "max_connections_per_client": args.max_connections_per_client}


def run(args: argparse.Namespace) -> int:
    from legato.stream.intra_op import serial_main_thread

    serial_main_thread()  # models load here but run on the engine's workers (stream/intra_op.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # its line per connection drowns ours at scale
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from legato.server.models import DEFAULT_MODEL
    from legato.stream.engine import Engine
    from legato.server.ws_server import ServerConfig, TranscriptionServer

    if args.precision:  # read where models load (server/models.py)
        os.environ["LEGATO_PRECISION"] = args.precision
    if args.kv_cache:
        os.environ["LEGATO_KV_CACHE"] = args.kv_cache
    token = None
    if args.auth_token_file:
        from legato.server.auth import AuthConfigError, read_token_file

        try:
            token = read_token_file(args.auth_token_file)
        except AuthConfigError as exc:
            print(f"legato serve: {exc}", flush=True)
            return 2
    if args.no_asr and args.no_tts:
        print("legato serve: --no-asr and --no-tts leave nothing to serve", flush=True)
        return 2
    if args.bulk:
        return await _serve_bulk(args, token)
    args.max_batch = args.max_batch or GENERAL_MAX_BATCH
    # One engine serves every ASR model and every voice: one worker per device schedules all of their work.
    routes: dict = {}
    models: list[str] = []
    voices: dict = {}
    from legato.clients.progress import steps_bar

    specs = [] if args.no_asr else (args.models or [DEFAULT_MODEL])
    loaded, total = 0, len(specs) + (0 if args.no_tts else 1)
    update, close_bar = steps_bar("loading models")  # a terminal only; the lines below say what loads
    if not args.no_tts:
        from legato.tts.voices import VoiceConfigError, default_voices, load_voices
        from legato.server.tts_service import voice_routes

        print(f"legato: loading voices from {args.voices or 'the embedded voice (joe)'} ...", flush=True)
        try:
            voices, default_voice = load_voices(args.voices) if args.voices else default_voices()
        except (VoiceConfigError, ValueError, OSError) as exc:
            close_bar()
            print(f"legato serve: {exc}", flush=True)
            return 2
        routes.update(voice_routes(voices))
        loaded += 1
        update(loaded, total)
    if not args.no_asr:
        from legato.server.models import load_recognizer, pipeline_for

        for spec in specs:
            print(f"legato: loading {spec} ...", flush=True)
            name, recognizer = load_recognizer(spec)
            routes[name] = pipeline_for(recognizer, max_streams=args.max_connections, max_batch=args.max_batch)
            models.append(name)
            loaded += 1
            update(loaded, total)
    close_bar()
    engine = Engine(routes, max_streams=2 * args.max_connections, default_budget_s=args.latency_budget).start()
    servers = []
    tts = None
    if voices:
        from legato.server.grpc_server import GrpcConfig, TtsGrpcServer
        from legato.server.tts_service import TtsService

        grpc_config = GrpcConfig(
            host=args.host, port=args.grpc_port, max_concurrent_rpcs=args.max_connections, auth_token=token,
            certfile=args.certfile, keyfile=args.keyfile,
        )
        tts = TtsService(voices, default_voice, engine=engine)
        tts_server = await TtsGrpcServer(tts, grpc_config).start()
        servers.append(tts_server)
        print(f"legato: serving text-to-speech (gRPC legato.tts.v1) on {tts_server.target} (voices: {', '.join(voices)}; default {default_voice})", flush=True)
    config = ServerConfig(
        host=args.host, port=args.port, max_connections=args.max_connections, max_message_bytes=args.max_message_bytes,
        idle_timeout_s=args.idle_timeout, latency_budget_s=args.latency_budget, auth_token=token,
        certfile=args.certfile, keyfile=args.keyfile, **client_limits(args),
    )
    # One port: live transcription (WebSocket), the OpenAI-compatible API (speech too), health and the page.
    server = await TranscriptionServer(engine, models, config, own_engine=False, tts=tts).start()
    servers.append(server)
    if models:
        print(f"legato: serving live transcription on {server.url} (models: {', '.join(models)}); health at {server.http_url}/healthz", flush=True)
    print(f"legato: OpenAI-compatible API on {server.http_url}/v1 (docs/HTTP.md), metrics at {server.http_url}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("legato: draining: no new streams; finishing the open ones", flush=True)
    for srv in servers:  # first every health check and new call says "draining", then both kinds of work finish
        await srv.begin_drain()
    await asyncio.gather(*(srv.drain() for srv in servers))
    engine.stop()
    print("legato: stopped", flush=True)
    return 0


async def _serve_bulk(args: argparse.Namespace, token: str | None) -> int:
    """--bulk: one FastConformer CTC model, streams stepped as arrays (server/bulk_engine.py)."""
    from legato.server.bulk_engine import BulkEngine
    from legato.server.models import UnknownModelError, load_recognizer
    from legato.server.ws_server import ServerConfig, TranscriptionServer

    specs = args.models or []
    if args.voices or args.no_asr or len(specs) != 1 or not specs[0].startswith("fastconformer:"):
        print("legato serve: --bulk serves exactly one --model fastconformer:FILE.nemo (no voices; it serves no TTS)", flush=True)
        return 2
    print(f"legato: loading {specs[0]} ...", flush=True)
    try:
        name, recognizer = load_recognizer(specs[0])
        engine = BulkEngine(name, recognizer, capacity=args.max_connections, max_batch=args.max_batch or BULK_MAX_BATCH,
                            lookahead_ms=args.lookahead_ms, decoder=args.decoder, stats_every_s=args.stats_every or None,
                            graph_rows=args.graph_rows)
    except (UnknownModelError, ValueError) as exc:
        print(f"legato serve: {exc}", flush=True)
        return 2
    config = ServerConfig(
        host=args.host, port=args.port, max_connections=args.max_connections, max_message_bytes=args.max_message_bytes,
        idle_timeout_s=args.idle_timeout, latency_budget_s=args.latency_budget, auth_token=token,
        certfile=args.certfile, keyfile=args.keyfile, **client_limits(args),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    where = f"lookahead {engine.lookahead_ms} ms, {engine.bulk.decoder} decoder, up to {args.max_connections} streams"
    print("legato: warming up (the GPU kernels compile before the first client, not on its audio) ...", flush=True)
    from legato.clients.progress import steps_bar

    update, close = steps_bar("compiling")
    try:
        await loop.run_in_executor(None, engine.warm_up, update)
    finally:
        close()
    if args.frontends > 1:
        return await _serve_frontends(args, engine, name, config, where, stop)
    server = await TranscriptionServer(engine, [name], config).start()
    print(f"legato: serving live transcription (bulk path, {where}) on {server.url} (model: {name}); "
          f"health at {server.url.replace('ws', 'http', 1)}/healthz", flush=True)
    await stop.wait()
    print("legato: draining: no new streams; finishing the open ones", flush=True)
    await server.drain()
    print("legato: stopped", flush=True)
    return 0


async def _serve_frontends(args, engine, name: str, config, where: str, stop: asyncio.Event) -> int:
    """--bulk --frontends N: N WebSocket processes on the port; the model and its worker here."""
    import dataclasses
    import socket

    from legato.server.frontends.links import start_frontends, stop_frontends

    if config.port == 0:  # every front end must bind the same port: pick one now
        with socket.socket() as s:
            s.bind((config.host, 0))
            config = dataclasses.replace(config, port=s.getsockname()[1])
    engine.start()
    loop = asyncio.get_running_loop()
    frontends = await loop.run_in_executor(None, start_frontends, engine, args.frontends, config)
    scheme = "wss" if config.certfile else "ws"
    print(f"legato: serving live transcription (bulk path, {where}, {args.frontends} front-end processes) on "
          f"{scheme}://{config.host}:{config.port} (model: {name})", flush=True)
    await stop.wait()
    print("legato: draining: no new streams; finishing the open ones", flush=True)
    await loop.run_in_executor(None, stop_frontends, frontends)
    engine.stop()
    print("legato: stopped", flush=True)
    return 0
