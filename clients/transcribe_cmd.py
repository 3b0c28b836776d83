"""``legato transcribe FILE``: transcribe a file in-process or through a server."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe an audio file (locally, or streamed to a server)",
        description="Transcribe FILE (any format soundfile reads, any sample rate). Without --server the default "
        "model runs in this process; with --server the file is streamed over WebSocket and finals print as they commit.",
    )
    p.add_argument("file", help="audio file (wav, flac, ogg, ...)")
    p.add_argument("--server", metavar="URL", help="stream to a legato server, e.g. ws://127.0.0.1:8765")
    p.add_argument("--realtime", action="store_true", help="with --server: send at the speed of speech instead of as fast as possible")
    p.add_argument("--chunk-ms", type=int, default=100, help="with --server: audio per message (default 100 ms)")
    p.add_argument("--partials", action="store_true", help="with --server: also print partial results")
    p.add_argument("--model", help="model name or spec: whisper-tiny.en (default), whisper-ct2:FOLDER, "
                   "whisper-openai:FILE.pt, fastconformer:FILE.nemo, paraformer:FOLDER (FunASR, streaming or offline), "
                   "paraformer-2pass:STREAMING_FOLDER,OFFLINE_FOLDER")
    p.add_argument("--lookahead-ms", type=int, help="cache-aware models: right context in ms (one the model has; default its first)")
    p.add_argument("--decoder", choices=["rnnt", "ctc"], help="hybrid FastConformer models: which head decodes (default rnnt)")
    p.add_argument("--beam-size", type=int, default=1, help="local only: beam search width (default 1 = greedy)")
    p.add_argument("--timestamps", action="store_true", help="print segment start/end times, and each word's (Whisper: by cross-attention DTW, as openai-whisper's word_timestamps)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from legato.stream.audio_io import read_audio
    from legato.stream.errors import LegatoError

    try:
        if args.server:
            audio, rate = read_audio(args.file, mono=False)
            return asyncio.run(_remote(args, audio, rate))
        audio, _ = read_audio(args.file, sample_rate=16000)
    except LegatoError as exc:
        print(f"legato transcribe: {exc}", file=sys.stderr)
        return 2
    return _local(args, audio[:, 0])


def _local(args: argparse.Namespace, audio) -> int:
    from dataclasses import replace

    from legato.server.models import DEFAULT_MODEL, load_recognizer

    from legato.asr.fastconformer.recognizer import FastConformerRecognizer
    from legato.asr.paraformer.recognizer import ParaformerRecognizer
    from legato.asr.paraformer.two_pass import TwoPassModels

    try:
        _, rec = load_recognizer(args.model or DEFAULT_MODEL)
        t0 = time.perf_counter()
        if isinstance(rec, FastConformerRecognizer):
            segments = rec.transcribe(audio, args.lookahead_ms, args.decoder)
        elif isinstance(rec, (ParaformerRecognizer, TwoPassModels)):
            segments = _through_pipeline(rec, audio)
        else:
            from legato.clients.progress import seconds_bar

            rec.options = replace(rec.options, beam_size=args.beam_size)
            update, close = seconds_bar(audio.shape[0] / 16000, "transcribing")
            try:
                segments = rec.transcribe(audio, progress=update, word_times=args.timestamps)
            finally:
                close()
    except ValueError as exc:  # unknown model, unsupported config, bad lookahead or decoder
        print(f"legato transcribe: {exc}", file=sys.stderr)
        return 2
    for s in segments:
        print(f"[{s.start_s:7.2f} -> {s.end_s:7.2f}]{s.text}" if args.timestamps else s.text.strip())
        for w in s.words if args.timestamps else ():  # Whisper: each word's time by cross-attention DTW
            print(f"    [{w.start_s:7.2f} -> {w.end_s:7.2f}] {w.word}")
    elapsed = time.perf_counter() - t0
    print(f"({audio.shape[0] / 16000:.1f} s of audio in {elapsed:.1f} s)", file=sys.stderr)
    return 0


def _through_pipeline(models, audio) -> list:
    """The live pipeline over the whole file as fast as it runs (VAD utterances for offline Paraformers): its finals."""
    from legato.asr.whisper.transcribe import Segment
    from legato.server.models import pipeline_for
    from legato.stream.engine import Engine
    from legato.stream.frames import ErrorEvent, TextEvent, TextKind
    from legato.stream.testing import audio_chunks

    from legato.clients.progress import seconds_bar

    update, close = seconds_bar(audio.shape[0] / 16000, "transcribing")
    with Engine(pipeline_for(models, max_streams=1), default_budget_s=60.0) as engine:
        handle = engine.open_stream(options={"interim_results": False})
        try:  # a push waits while the stream's queue is full: audio pushed is audio the model has nearly done
            for chunk in audio_chunks(audio, 16000, 16000):
                handle.push(chunk)
                update((chunk.start_sample + chunk.samples.shape[0]) / 16000, audio.shape[0] / 16000)
        finally:
            close()
        handle.end()
        frames = handle.results(timeout=max(600.0, audio.shape[0] / 16000))
    for f in frames:
        if isinstance(f, ErrorEvent):
            raise ValueError(f.message)
    return [Segment(f.start_s, f.end_s, " " + f.text, ()) for f in frames if isinstance(f, TextEvent) and f.kind is TextKind.FINAL]


async def _remote(args: argparse.Namespace, audio, rate: int) -> int:
    from legato.clients.ws_client import stream_audio

    async for msg in stream_audio(args.server, audio, rate, chunk_ms=args.chunk_ms, realtime=args.realtime, interim_results=args.partials, model=args.model,
                                     lookahead_ms=args.lookahead_ms, decoder=args.decoder):
        if msg["type"] == "final":
            print(f"[{msg['start']:7.2f} -> {msg['end']:7.2f}] {msg['text']}" if args.timestamps else msg["text"], flush=True)
            for w in msg.get("words", []) if args.timestamps else ():
                print(f"    [{w['start']:7.2f} -> {w['end']:7.2f}] {w['word']}", flush=True)
        elif msg["type"] == "partial" and args.partials:
            print(f"  ... {msg['text']}", file=sys.stderr, flush=True)
        elif msg["type"] == "error":
            print(f"legato transcribe: server error {msg['code']}: {msg['message']}", file=sys.stderr)
            return 1
    return 0
