"""``legato serve --bulk --frontends N``: WebSocket front ends in N processes around one bulk engine.

One asyncio loop spends about 0.3 ms per message in or out (WebSocket framing, protocol, JSON), so one process
carries a thousand or two paced 160 ms streams while the GPU path carries tens of thousands. Here N front-end
processes share the port (``SO_REUSEPORT``: the kernel spreads connections over them), each running the usual
``TranscriptionServer`` over a ``RemoteEngine``; the engine process (model, ``BulkEngine``'s worker) talks to each
over a pipe:

* front end -> engine: ``open`` (options), ``audio`` (whole model chunks, the front end having averaged channels,
  resampled and cut the client's messages; everything queued since the last send goes as one message), ``end``
  (the last partial chunk), ``cancel``;
* engine -> front end: ``setup`` (the tokenizer and frame length: the front end turns tokens into words, so
  that work is spread over the front ends, not done on the engine's stepping thread), ``opened`` / ``refused``
  (a capacity or option error), ``updates`` (one message per step per front end: each stream's new tokens, whether
  its utterance ended, whether the stream did), ``error``.

The engine pushes a message's chunks with ``push_many`` (a slot at most once per call), so its per-chunk cost is a
few array operations, not a Python call per client message. A full stream queue (the GPU behind) makes the
engine's reader wait, which fills the pipe, which makes the front end's ``apush`` wait: back-pressure to the
client's TCP, as in one process. A front end that dies has its streams cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import queue
import signal
import threading
import time
from dataclasses import asdict

import numpy as np

from legato.asr.fastconformer.tokenizer import SentencePieceTokenizer
from legato.server.bulk_engine import SAMPLE_RATE, BulkEngine, HandleEvents, StreamAudio
from legato.server.bulk_text import StreamText
from legato.stream.errors import CapacityError
from legato.stream.frames import AudioChunk, EndOfStream, ErrorEvent, Frame
from legato.stream.metrics import Histogram

log = logging.getLogger("legato.bulk")

MAX_AUDIO_IN_FLIGHT = 4096  # chunks a front end may have queued for its pipe before apush waits
BATCH_MESSAGES = 512  # queued messages a sender merges into one pipe message at most
FULL_RETRY_S = 0.005  # the engine's reader waits this long for a full stream queue to drain
READY_TIMEOUT_S = 120
LAG_PROBE_S = 0.02  # a front end's loop-lag probe sleeps this long (with stats on)


# -- the engine process's side -------------------------------------------------------------


class _RemoteStream:
    """A stream of a front end, as the engine's worker sees it (its token updates go to the link's pipe)."""

    def __init__(self, link: "FrontendLink", key: int, slot: int):
        self.link, self.key, self.slot = link, key, slot
        self.sink = link.send_updates
        self.ending = False

    def _fail(self, code: str, message: str) -> None:
        self.link.forget(self)
        self.link.send(("error", self.key, code, message))


class FrontendLink:
    """The engine process's end of one front end's pipe: a reader thread for its requests, a writer thread for
    replies and events."""

    def __init__(self, engine: BulkEngine, conn, index: int):
        self.engine, self.conn, self.index = engine, conn, index
        self.ready = threading.Event()
        self._streams: dict[int, _RemoteStream] = {}  # key -> stream
        self._by_slot: dict[int, _RemoteStream] = {}
        self._out: queue.Queue = queue.Queue()
        tokenizer = engine.recognizer.tokenizer
        self._out.put(("setup", tokenizer.model_proto, engine.recognizer.frame_s))
        self._msgs = self._chunks = 0  # audio messages and chunks read since the last stats line
        self._full_wait_s = 0.0  # the reader's sleeps on full stream queues since then
        engine.stats_lines.append(self.stats_line)
        self._threads = [threading.Thread(target=self._read, name=f"legato-frontend-{index}-in", daemon=True),
                         threading.Thread(target=self._write, name=f"legato-frontend-{index}-out", daemon=True)]
        for t in self._threads:
            t.start()

    def send_updates(self, updates: list) -> None:
        """On the worker thread: one pipe message for a step's token updates of this front end's streams."""
        for st, _, _, _, end in updates:
            if end:
                self.forget(st)
        self._out.put(("updates", [(st.key, tokens, frames, final, end) for st, tokens, frames, final, end in updates]))

    def send(self, msg: tuple) -> None:
        self._out.put(msg)

    def stats_line(self) -> str:
        """Front end i's audio since the last call (its reader waiting on full queues: the worker is behind)."""
        msgs, chunks, wait = self._msgs, self._chunks, self._full_wait_s
        self._msgs = self._chunks = 0
        self._full_wait_s = 0.0
        return f"front end {self.index}: {len(self._streams):,} streams, {chunks:,} chunks in {msgs:,} messages, waited {wait:.2f} s"

    def forget(self, st: _RemoteStream) -> None:
        self._streams.pop(st.key, None)
        if self._by_slot.get(st.slot) is st:
            del self._by_slot[st.slot]

    def join(self) -> None:
        self._out.put(None)
        for t in self._threads:
            t.join(timeout=5)

    def _write(self) -> None:
        while (msg := self._out.get()) is not None:
            try:
                self.conn.send(msg)
            except (OSError, EOFError, BrokenPipeError):
                return

    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                kind = msg[0]
                if kind == "audio":
                    self._audio(msg[1])
                elif kind == "open":
                    self._open(*msg[1:])
                elif kind == "end":
                    self._end(*msg[1:])
                elif kind == "cancel":
                    self._cancel(msg[1])
                elif kind == "ready":
                    self.ready.set()
        except (EOFError, OSError):
            pass
        for key in list(self._streams):  # the front end is gone: free its streams' slots
            self._cancel(key)

    def _open(self, key: int, options: dict, route: str | None) -> None:
        try:
            opts = self.engine._check(options, route)
        except (ValueError, KeyError) as exc:
            self._out.put(("refused", key, "bad_request", str(exc)))
            return

        def opened(future) -> None:  # on the worker thread
            if future.exception() is not None:
                self._out.put(("refused", key, "capacity", str(future.exception())))
                return
            st = _RemoteStream(self, key, future.result())
            self._streams[key], self._by_slot[st.slot] = st, st
            self.engine.register(st.slot, st, opts)
            self._out.put(("opened", key, st.slot))

        self.engine.request_open().add_done_callback(opened)

    def _audio(self, items: list) -> None:
        """(key, chunks (n, chunk)) pairs -> push_many rounds, a slot at most once per round, until all are queued."""
        pending = [(st.slot, c) for key, chunks in items if (st := self._streams.get(key)) is not None and not st.ending
                   for c in chunks]
        self._msgs += 1
        self._chunks += len(pending)
        while pending:
            seen: set[int] = set()
            now, later = [], []
            for slot, c in pending:
                (later if slot in seen else now).append((slot, c))
                seen.add(slot)
            refused = self.engine.bulk.push_many(np.array([s for s, _ in now]), np.stack([c for _, c in now]))
            later = [item for item, r in zip(now, refused) if r] + later
            if refused.any():
                time.sleep(FULL_RETRY_S)  # the GPU is behind: hold this front end (its pipe fills, its clients wait)
                self._full_wait_s += FULL_RETRY_S
            pending = later

    def _end(self, key: int, tail: np.ndarray) -> None:
        st = self._streams.get(key)
        if st is None or st.ending:
            return
        while True:
            try:
                self.engine.bulk.push(st.slot, tail)
                break
            except CapacityError:
                time.sleep(FULL_RETRY_S)
        st.ending = True
        self.engine._end(st)

    def _cancel(self, key: int) -> None:
        st = self._streams.get(key)
        if st is None:
            return
        self.forget(st)
        self.engine._forget(st)
        if not st.ending:
            self.engine.request_cancel(st.slot)


def start_frontends(engine: BulkEngine, count: int, config) -> tuple[list, list[FrontendLink]]:
    """``count`` front-end processes serving ``config`` (a ``ServerConfig`` with a fixed port) over ``engine``;
    returns once each listens."""
    ctx = multiprocessing.get_context("spawn")  # not fork: this process holds CUDA and threads
    procs, links = [], []
    for i in range(count):
        parent, child = ctx.Pipe()
        settings = asdict(config) | {"reuse_port": True, "bulk_chunk": engine.bulk.chunk, "stats_every_s": engine.stats_every_s}
        p = ctx.Process(target=frontend_main, args=(child, engine.routes[0], settings, i), name=f"legato-frontend-{i}")
        p.start()
        child.close()
        procs.append(p)
        links.append(FrontendLink(engine, parent, i))
    for link, p in zip(links, procs):
        if not link.ready.wait(READY_TIMEOUT_S):
            raise RuntimeError(f"front end {link.index} did not start (exit code {p.exitcode})")
    return procs, links


def stop_frontends(procs: list, links: list[FrontendLink]) -> None:
    """SIGTERM each front end (it drains its streams: their ends still go through the engine) and wait for it."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.join()
    for link in links:
        link.join()


# -- a front-end process's side ----------------------------------------------------------------


class RemoteHandle(HandleEvents):
    """One client stream in a front end: audio cut into model chunks and sent; events from the engine."""

    def __init__(self, engine: "RemoteEngine", key: int, slot: int, rate: int, interim: bool, chunk: int):
        self.engine, self.key, self.slot, self.stream_id = engine, key, slot, f"bulk-{slot}"
        self.text = StreamText(interim)
        self.audio = StreamAudio(rate)
        self._chunk = chunk
        self._buffer = np.zeros(0, np.float32)
        self._out: asyncio.Queue[Frame] = asyncio.Queue()
        self._ending = False
        self.finished = False

    async def apush(self, chunk: AudioChunk) -> None:
        if self._ending:
            return
        chunks = self._whole_chunks(self.audio.push(chunk))
        if len(chunks):
            while self.engine.in_flight >= MAX_AUDIO_IN_FLIGHT:  # the engine is behind: hold this client
                await asyncio.sleep(FULL_RETRY_S)
            self.engine.send_audio(self.key, chunks)

    async def aend(self) -> None:
        if self._ending:
            return
        self._ending = True
        chunks = self._whole_chunks(self.audio.flush())
        if len(chunks):
            self.engine.send_audio(self.key, chunks)
        self.engine.send(("end", self.key, self._buffer))

    def _whole_chunks(self, samples: np.ndarray) -> np.ndarray:
        """Append to the buffer; take the whole model chunks off its front, (n, chunk)."""
        self._buffer = np.concatenate([self._buffer, samples])
        whole = len(self._buffer) // self._chunk * self._chunk
        chunks, self._buffer = self._buffer[:whole].reshape(-1, self._chunk), self._buffer[whole:]
        return chunks

    def cancel(self) -> None:
        if not self._ending:
            self._ending = True
            self.engine.send(("cancel", self.key))
        self.finished = True
        self.engine.handles.pop(self.key, None)

    async def __anext__(self) -> Frame:
        frame = await super().__anext__()
        if self.finished:
            self.engine.handles.pop(self.key, None)
        return frame


class RemoteEngine:
    """``Engine``'s face for a front end's ``TranscriptionServer``, over the pipe to the engine process."""

    def __init__(self, conn, name: str, chunk: int):
        self.conn, self.routes, self.chunk = conn, [name], chunk
        self.handles: dict[int, RemoteHandle] = {}
        self.in_flight = 0  # audio chunks queued for the pipe
        self.closed = asyncio.Event()
        self._opening: dict[int, tuple[asyncio.Future, dict]] = {}
        self.tokenizer: SentencePieceTokenizer | None = None  # from the engine's setup message
        self.frame_s = 0.0
        self._keys = itertools.count()
        self._out: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> "RemoteEngine":
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, name="legato-engine-in", daemon=True).start()
        threading.Thread(target=self._write, name="legato-engine-out", daemon=True).start()
        return self

    def stop(self) -> None:
        self._out.put(None)

    async def aopen_stream(self, budget_s=None, options: dict | None = None, stream_id: str | None = None, route: str | None = None):
        key = next(self._keys)
        future = asyncio.get_running_loop().create_future()
        self._opening[key] = (future, dict(options or {}))
        self.send(("open", key, dict(options or {}), route))
        return await future

    def send(self, msg: tuple) -> None:
        self._out.put(msg)

    def send_audio(self, key: int, chunks: np.ndarray) -> None:
        with self._lock:
            self.in_flight += len(chunks)
        self._out.put(("audio", [(key, chunks)]))

    def _write(self) -> None:
        """Everything queued since the last send in one pipe message per run of audio (fewer, larger messages)."""
        while (msg := self._out.get()) is not None:
            batch = [msg]
            while len(batch) < BATCH_MESSAGES:
                try:
                    batch.append(self._out.get_nowait())
                except queue.Empty:
                    break
            merged: list = []
            for m in batch:
                if m is None:
                    self._out.put(None)
                    break
                if m[0] == "audio" and merged and merged[-1][0] == "audio":
                    merged[-1][1].extend(m[1])
                else:
                    merged.append(("audio", list(m[1])) if m[0] == "audio" else m)
            for m in merged:
                try:
                    self.conn.send(m)
                except (OSError, EOFError, BrokenPipeError):
                    return
                if m[0] == "audio":
                    with self._lock:
                        self.in_flight -= sum(len(c) for _, c in m[1])

    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                self._loop.call_soon_threadsafe(self._dispatch, msg)
        except (EOFError, OSError):
            self._loop.call_soon_threadsafe(self.closed.set)

    def _dispatch(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "updates":  # words and events built here, in the front end
            for key, tokens, frames, final, end in msg[1]:
                h = self.handles.get(key)
                if h is None:
                    continue
                for event in h.text.update(self.tokenizer, self.frame_s, tokens, frames, final):
                    h._out.put_nowait(event)
                if end:
                    h._out.put_nowait(EndOfStream())
        elif kind == "error":
            _, key, code, message = msg
            if (h := self.handles.get(key)) is not None:
                h._out.put_nowait(ErrorEvent(code, message, "bulk"))
        elif kind == "setup":
            self.tokenizer, self.frame_s = SentencePieceTokenizer(msg[1]), msg[2]
        elif kind == "opened":
            _, key, slot = msg
            future, opts = self._opening.pop(key)
            h = RemoteHandle(self, key, slot, opts.get("sample_rate", SAMPLE_RATE), bool(opts.get("interim_results", True)), self.chunk)
            self.handles[key] = h
            if future.cancelled():  # the client left while opening
                h.cancel()
            else:
                future.set_result(h)
        elif kind == "refused":
            _, key, code, message = msg
            future, _ = self._opening.pop(key)
            if not future.cancelled():
                future.set_exception(CapacityError(message) if code == "capacity" else ValueError(message))


def frontend_main(conn, name: str, config: dict, index: int) -> None:
    """A front-end process: the WebSocket server on the shared port until SIGTERM/SIGINT (drain) or the engine's
    pipe closes."""
    level = logging.INFO if config.get("stats_every_s") else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s frontend-{index} %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # not a line per connection: thousands of streams
    asyncio.run(_frontend(conn, name, config, index))


async def _frontend(conn, name: str, config: dict, index: int) -> None:
    from legato.server.ws_server import ServerConfig, TranscriptionServer

    chunk, stats_every_s = config.pop("bulk_chunk"), config.pop("stats_every_s", None)
    engine = RemoteEngine(conn, name, chunk)
    server = await TranscriptionServer(engine, [name], ServerConfig(**config)).start()
    engine.send(("ready",))
    reporter = asyncio.create_task(_report(engine, index, stats_every_s)) if stats_every_s else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    done, _ = await asyncio.wait([asyncio.create_task(stop.wait()), asyncio.create_task(engine.closed.wait())],
                                 return_when=asyncio.FIRST_COMPLETED)
    await server.drain()
    if reporter is not None:
        reporter.cancel()


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
