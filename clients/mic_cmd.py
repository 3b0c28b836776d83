"""``legato mic``: live transcription of the default microphone, in-process or through a server."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys

import numpy as np
from websockets.exceptions import InvalidHandshake, InvalidURI

MIC_QUEUE_CHUNKS = 100  # 10 s of 100 ms chunks waiting to be sent; past that the transcriber is too slow
STOP_GRACE_S = 0.8  # after Ctrl-C, wait this long for the last final, then leave


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mic",
        help="transcribe the microphone live",
        description="Capture the default input device (or --device) and print live transcription: the current partial "
        "result updates in place, committed text prints on its own line. Ctrl-C stops within a second.",
    )
    p.add_argument("--server", metavar="URL", help="stream to a legato server (ws://HOST:PORT); default: run the model here")
    p.add_argument("--device", help="input device index or name substring (see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.add_argument("--sample-rate", type=int, help="capture rate in Hz (default: the device's own)")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default 100 ms)")
    p.add_argument("--no-partials", action="store_true", help="print committed text only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sounddevice as sd

    if args.list_devices:
        print(sd.query_devices())
        return 0
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    try:
        info = sd.query_devices(device, "input")
    except Exception as exc:
        print(f"legato mic: no usable input device ({exc}); see --list-devices", file=sys.stderr)
        return 2
    rate = args.sample_rate or int(info["default_samplerate"])
    print(f"legato mic: listening on {info['name']!r} at {rate} Hz; Ctrl-C to stop", file=sys.stderr, flush=True)
    code = asyncio.run(_main(args, device, rate))
    # Everything is closed (device, connection, engine input); skip the interpreter's slow torch
    # teardown so Ctrl-C returns within a second.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Display:
    """Partials rewrite the current line; finals end it."""

    def __init__(self, partials: bool):
        self.partials, self.shown, self.failed = partials, 0, False
        self.width = shutil.get_terminal_size((100, 20)).columns - 1

    def finish(self) -> None:
        """End a partial line left on screen."""
        if self.shown:
            sys.stdout.write("\n")
            self.shown = 0
        sys.stdout.flush()

    def show(self, msg: dict) -> None:
        if msg["type"] == "partial" and self.partials:
            text = msg["text"][-self.width :]
            sys.stdout.write("\r" + text + " " * max(0, self.shown - len(text)))
            self.shown = len(text)
        elif msg["type"] == "final":
            sys.stdout.write("\r" + " " * self.shown + "\r" + msg["text"] + "\n")
            self.shown = 0
        elif msg["type"] == "error":
            self.failed = True
            sys.stdout.write(f"\nlegato mic: error {msg['code']}: {msg['message']}\n")
        sys.stdout.flush()


async def _main(args: argparse.Namespace, device, rate: int) -> int:
    import sounddevice as sd

    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue = asyncio.Queue(MIC_QUEUE_CHUNKS)
    stop = asyncio.Event()
    dropped = 0

    def on_audio(block: np.ndarray, frames: int, time_info, status) -> None:  # PortAudio thread
        def put(data=block[:, :1].copy()) -> None:
            nonlocal dropped
            if chunks.full():
                dropped += 1  # the mic cannot be paused: count what the transcriber could not take
            else:
                chunks.put_nowait(data)

        loop.call_soon_threadsafe(put)

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    display = _Display(not args.no_partials)
    blocksize = max(1, rate * args.chunk_ms // 1000)
    # Connect (or load the model) before opening the device, so no audio piles up meanwhile.
    session = _RemoteSession(args.server, rate) if args.server else _LocalSession(rate)
    try:
        await session.open(not args.no_partials)
    except (OSError, InvalidURI, InvalidHandshake) as exc:
        if not args.server:
            raise
        print(f"legato mic: cannot connect to {args.server}: {exc}", file=sys.stderr)
        return 2
    with sd.InputStream(device=device, samplerate=rate, channels=1, dtype="float32", blocksize=blocksize, callback=on_audio):
        reader = asyncio.create_task(session.read(display))
        stopper = asyncio.create_task(stop.wait())
        while not stop.is_set():
            getter = asyncio.create_task(chunks.get())
            done, _ = await asyncio.wait({getter, stopper, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                await session.send(getter.result())
            else:
                getter.cancel()
                break
    await session.end()
    try:
        await asyncio.wait_for(reader, STOP_GRACE_S)
    except asyncio.TimeoutError:
        reader.cancel()
    await session.close()
    display.finish()
    if dropped:
        print(f"legato mic: {dropped} chunk(s) dropped: transcription could not keep up", file=sys.stderr)
    return 1 if display.failed else 0


class _RemoteSession:
    def __init__(self, url: str, rate: int):
        self.url, self.rate, self.ws = url, rate, None

    async def open(self, partials: bool) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, compression=None)
        await self.ws.send(json.dumps({"type": "start", "sample_rate": self.rate, "encoding": "f32le", "channels": 1, "interim_results": partials}))

    async def send(self, block: np.ndarray) -> None:
        await self.ws.send(block.astype("<f4").tobytes())

    async def read(self, display: _Display) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            display.show(msg)
            if msg["type"] in ("end", "error"):
                return

    async def end(self) -> None:
        try:
            await self.ws.send(json.dumps({"type": "end"}))
        except Exception:  # already closed by the server
            pass

    async def close(self) -> None:
        await self.ws.close()


class _LocalSession:
    def __init__(self, rate: int):
        self.rate, self.samples = rate, 0

    async def open(self, partials: bool) -> None:
        from legato.server.models import DEFAULT_MODEL, build_engine

        _, self.engine = await asyncio.to_thread(build_engine, DEFAULT_MODEL, max_streams=1)
        self.engine.start()
        self.handle = self.engine.open_stream(options={"interim_results": partials})

    async def send(self, block: np.ndarray) -> None:
        import torch

        from legato.stream.frames import AudioChunk

        await self.handle.apush(AudioChunk(torch.from_numpy(block), self.rate, self.samples))
        self.samples += block.shape[0]

    async def read(self, display: _Display) -> None:
        from legato.server.protocol import text_message
        from legato.stream.frames import ErrorEvent, TextEvent

        async for frame in self.handle:
            if isinstance(frame, TextEvent):
                display.show(text_message(frame))
            elif isinstance(frame, ErrorEvent):
                display.show({"type": "error", "code": frame.code, "message": frame.message})

    async def end(self) -> None:
        await self.handle.aend()

    async def close(self) -> None:
        pass  # the engine's worker threads are daemons; the process is about to end
