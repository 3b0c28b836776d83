"""One front-end process of ``legato serve --bulk --frontends N`` (the engine's side: ``links.py``).

It runs the usual ``TranscriptionServer`` over a ``RemoteEngine``: the client's audio is averaged, resampled and
cut into whole model chunks here, and sent to the engine process over the pipe; token updates come back once per
step and are turned into words and events here (so that work is spread over the front ends). Streams are named
by their engine slot once opened; a slot's updates are only taken while the slot is this front end's (the pipe
is in order: updates of a cancelled stream arrive before the slot could be opened again).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import signal
import socket
import sys
import threading
import time

import numpy as np

from legato.asr.fastconformer.tokenizer import SentencePieceTokenizer
from legato.server.bulk_engine import GIL_SWITCH_S, SAMPLE_RATE, HandleEvents, StreamAudio
from legato.asr.fastconformer.utterance_text import UtteranceText
from legato.server.frontends.messages import (
    Audio, Cancel, End, MetricsReply, MetricsRequest, Open, Opened, Ready, Refused, ServerCounters, Setup, StreamError, Updates,
)
from legato.server.frontends.pipe import enlarge_buffers, send_audio
from legato.stream.errors import CapacityError
from legato.stream.frames import AudioChunk, EndOfStream, ErrorEvent, Frame
from legato.stream.metrics import Histogram, MetricsSnapshot

log = logging.getLogger("legato.bulk")

MAX_AUDIO_IN_FLIGHT = 4096  # chunks a front end may have queued for its pipe before apush waits
BATCH_MESSAGES = 512  # queued messages a sender merges into one pipe message at most
COUNTERS_EVERY_S = 1.0  # how often a front end's server counters reach the engine process (/metrics)
METRICS_TIMEOUT_S = 5.0  # a scrape waits this long for the engine process's reply
LAG_PROBE_S = 0.02  # the loop-lag probe sleeps this long (with stats on)


class RemoteHandle(HandleEvents):
    """One client stream in a front end: audio cut into model chunks and sent; events from the engine."""

    def __init__(self, engine: "RemoteEngine", slot: int, rate: int, interim: bool, chunk: int):
        self.engine, self.slot, self.stream_id = engine, slot, f"bulk-{slot}"
        self.text = UtteranceText(interim)
        self.audio = StreamAudio(rate)
        self._chunk = chunk
        self._buffer = np.zeros(0, np.float32)
        self._out: asyncio.Queue[Frame] = asyncio.Queue()
        self._ending = False
        self.finished = False

    async def apush(self, chunk: AudioChunk) -> None:
        if self._ending:
            return
        samples = self.audio.push(chunk)
        if not np.isfinite(samples).all():  # this stream's error (as in one process), never the engine's
            self._out.put_nowait(ErrorEvent("non_finite_audio", "audio holds NaN or infinite samples", "bulk"))
            return
        chunks = self._whole_chunks(samples)
        if len(chunks):
            while self.engine.in_flight >= MAX_AUDIO_IN_FLIGHT:  # the engine is behind: hold this client
                await self.engine.room()
            self.engine.send_audio(self.slot, chunks)

    async def aend(self) -> None:
        if self._ending:
            return
        self._ending = True
        chunks = self._whole_chunks(self.audio.flush())
        if len(chunks):
            self.engine.send_audio(self.slot, chunks)
        self.engine.send(End(self.slot, self._buffer))

    def _whole_chunks(self, samples: np.ndarray) -> np.ndarray:
        """Append to the buffer; take the whole model chunks off its front, (n, chunk)."""
        self._buffer = np.concatenate([self._buffer, samples])
        whole = len(self._buffer) // self._chunk * self._chunk
        chunks, self._buffer = self._buffer[:whole].reshape(-1, self._chunk), self._buffer[whole:]
        return chunks

    def cancel(self) -> None:
        if not self._ending:
            self._ending = True
            self.engine.send(Cancel(self.slot))
        self.finished = True
        self.engine.release(self)

    async def __anext__(self) -> Frame:
        frame = await super().__anext__()
        if self.finished:
            self.engine.release(self)
        return frame


class RemoteEngine:
    """``Engine``'s face for a front end's ``TranscriptionServer``, over the pipe to the engine process."""

    def __init__(self, conn, name: str, chunk: int):
        self.conn, self.routes, self.chunk = conn, [name], chunk
        self.handles: dict[int, RemoteHandle] = {}  # slot -> the stream of this front end holding it
        self.in_flight = 0  # audio chunks queued for the pipe
        # held clients wait on this, set by the writer once the queue has room: each polling every 5 ms cost the
        # loop ~170,000 timers a second with 845 clients held (py-spy: call_later among its busiest lines)
        self._room = asyncio.Event()
        self._held = False  # some client waits for room (read by the writer thread)
        self.closed = asyncio.Event()
        self._opening: dict[int, tuple[asyncio.Future, dict]] = {}
        self._metrics: dict[int, asyncio.Future] = {}  # MetricsRequest key -> the scrape waiting for the reply
        self.tokenizer: SentencePieceTokenizer | None = None  # from the engine's setup message
        self.frame_s = 0.0
        self._keys = itertools.count()
        # messages for the pipe, in order, and the writer's wake-up: a queue.Queue put notified a condition every
        # time (the writer thread woke per message, taking the GIL from the event loop: ~10 % of the loop's time)
        self._out: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> "RemoteEngine":
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, name="legato-engine-in", daemon=True).start()
        threading.Thread(target=self._write, name="legato-engine-out", daemon=True).start()
        return self

    def stop(self) -> None:
        self.send(None)

    async def aopen_stream(self, budget_s=None, options: dict | None = None, stream_id: str | None = None, route: str | None = None):
        key = next(self._keys)
        future = asyncio.get_running_loop().create_future()
        self._opening[key] = (future, dict(options or {}))
        self.send(Open(key, dict(options or {}), route))
        return await future

    async def ametrics(self) -> MetricsSnapshot:
        """The engine process's aggregate: its own metrics and every front end's server counters (this one's too)."""
        key = next(self._keys)
        future = asyncio.get_running_loop().create_future()
        self._metrics[key] = future
        self.send(MetricsRequest(key))
        try:
            return await asyncio.wait_for(future, METRICS_TIMEOUT_S)
        finally:
            self._metrics.pop(key, None)

    def release(self, h: RemoteHandle) -> None:
        if self.handles.get(h.slot) is h:
            del self.handles[h.slot]

    def send(self, msg: object | None) -> None:
        """Queue a message for the pipe (None: the writer stops after what is queued); wakes the writer only if
        it sleeps."""
        self._out.append(msg)
        if not self._wake.is_set():
            self._wake.set()

    async def room(self) -> None:
        """Wait until the pipe's audio queue may have room (the caller checks again)."""
        self._held = True
        self._room.clear()
        if self.in_flight < MAX_AUDIO_IN_FLIGHT:
            return
        await self._room.wait()

    def send_audio(self, slot: int, chunks: np.ndarray) -> None:
        with self._lock:
            self.in_flight += len(chunks)
        self.send(Audio(np.full(len(chunks), slot, np.int64), chunks))

    def _write(self) -> None:
        """Everything queued since the last send in one pipe message per run of audio (two arrays: fewer, larger
        messages, and no Python per chunk in the engine process)."""
        while True:
            self._wake.wait()
            self._wake.clear()  # a message queued from here on wakes the next round (this one may take it too)
            batch = []
            while self._out and len(batch) < BATCH_MESSAGES:
                batch.append(self._out.popleft())
            if self._out:
                self._wake.set()
            stop = None in batch  # the writer stops once what was queued before the None is sent
            if stop:
                batch = batch[: batch.index(None)]
            merged: list = []
            run: list[Audio] = []  # the current run of audio messages: sent as one
            for m in batch + [None]:
                if isinstance(m, Audio):
                    run.append(m)
                    continue
                if run:
                    merged.append(Audio(np.concatenate([a.slots for a in run]), np.concatenate([a.chunks for a in run])))
                    run = []
                if m is not None:
                    merged.append(m)
            for m in merged:
                try:
                    if isinstance(m, Audio):
                        send_audio(self.conn, m.slots, m.chunks)  # raw frames: no pickling here or in the engine
                    else:
                        self.conn.send(m)
                except (OSError, EOFError, BrokenPipeError):
                    return
                if isinstance(m, Audio):
                    with self._lock:
                        self.in_flight -= len(m.slots)
                    if self._held and self.in_flight < MAX_AUDIO_IN_FLIGHT:
                        self._held = False
                        self._loop.call_soon_threadsafe(self._room.set)
            if stop:
                return

    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                self._loop.call_soon_threadsafe(self._dispatch, msg)
        except (EOFError, OSError):
            self._loop.call_soon_threadsafe(self.closed.set)

    def _dispatch(self, msg: object) -> None:
        match msg:
            case Updates(updates):  # words and events built here, in the front end
                for slot, tokens, frames, final, end in updates.rows():
                    h = self.handles.get(slot)
                    if h is None:
                        continue
                    for event in h.text.update(self.tokenizer, self.frame_s, tokens, frames, final):
                        h._out.put_nowait(event)
                    if end:
                        h._out.put_nowait(EndOfStream())
            case StreamError(slot, code, message):
                if (h := self.handles.get(slot)) is not None:
                    h._out.put_nowait(ErrorEvent(code, message, "bulk"))
            case Setup(model_proto, frame_s):
                self.tokenizer, self.frame_s = SentencePieceTokenizer(model_proto), frame_s
            case Opened(key, slot):
                future, opts = self._opening.pop(key)
                h = RemoteHandle(self, slot, opts.get("sample_rate", SAMPLE_RATE), bool(opts.get("interim_results", True)), self.chunk)
                self.handles[slot] = h
                if future.cancelled():  # the client left while opening
                    h.cancel()
                else:
                    future.set_result(h)
            case MetricsReply(key, snapshot):
                if (future := self._metrics.get(key)) is not None and not future.done():
                    future.set_result(snapshot)
            case Refused(key, code, message):
                future, _ = self._opening.pop(key)
                if not future.cancelled():
                    future.set_exception(CapacityError(message) if code == "capacity" else ValueError(message))


def frontend_main(conn, name: str, config: dict, index: int) -> None:
    """A front-end process: the WebSocket server on the shared port until SIGTERM/SIGINT (drain) or the engine's
    pipe closes."""
    level = logging.INFO if config.get("stats_every_s") else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s frontend-{index} %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # not a line per connection: thousands of streams
    # the pipe writer thread gets the GIL back from the busy event loop soon (Python's default wait is 5 ms, per
    # socket-buffer piece of a 5 MB audio message), and writes such a message in few pieces
    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # a duplicate of the pipe's end
        enlarge_buffers(sock)
    asyncio.run(_frontend(conn, name, config, index))


async def _frontend(conn, name: str, config: dict, index: int) -> None:
    from legato.server.ws_server import ServerConfig, TranscriptionServer

    chunk, stats_every_s = config.pop("bulk_chunk"), config.pop("stats_every_s", None)
    engine = RemoteEngine(conn, name, chunk)
    server = await TranscriptionServer(engine, [name], ServerConfig(**config)).start()
    engine.send(Ready())
    counters = asyncio.create_task(_send_counters(engine, server))
    reporter = asyncio.create_task(_report(engine, index, stats_every_s)) if stats_every_s else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.wait([asyncio.create_task(stop.wait()), asyncio.create_task(engine.closed.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    counters.cancel()
    await server.drain()
    if reporter is not None:
        reporter.cancel()


async def _send_counters(engine: RemoteEngine, server) -> None:
    """This front end's server counters to the engine process each second: a scrape on any front end sees all."""
    while True:
        engine.send(ServerCounters(server.counters.snapshot()))
        await asyncio.sleep(COUNTERS_EVERY_S)


async def _report(engine: RemoteEngine, index: int, every_s: float) -> None:
    """A log line every ``every_s``: the front end's streams, audio queued for the pipe, and its event loop's lag
    (how late a short sleep wakes up: a loop near saturation delays every one of its clients' messages)."""
    lag, last = Histogram.latency(), time.monotonic()
    while True:
        t = time.monotonic()
        await asyncio.sleep(LAG_PROBE_S)
        now = time.monotonic()
        lag.record(max(0.0, now - t - LAG_PROBE_S))
        if now - last >= every_s:
            log.info("front end %d: %d streams, %d chunks queued for the pipe, loop lag p50/p99/max %.1f/%.1f/%.1f ms",
                     index, len(engine.handles), engine.in_flight, lag.quantile(0.5) * 1e3, lag.quantile(0.99) * 1e3,
                     lag.max * 1e3)
            lag, last = Histogram.latency(), now
