"""The WebSocket server over the bulk path (``legato serve --bulk``): one FastConformer model, streams as arrays.

The general engine moves every chunk through per-stream stage objects (~20 us of CPU per chunk per stage), which
caps one server at a few hundred real-time streams (docs/PERFORMANCE.md, load test). Here the server's
connections push their audio straight into ``BulkTranscriber``'s per-slot queues; one worker thread steps every
complete chunk of every stream as one batch; per-stream Python runs only for streams whose step emitted tokens
(their partial text) or whose utterance just ended (endpointing, vectorised over the batch). The class is a
``StreamService`` (``stream/service.py``), as ``Engine`` is: ``routes``, ``start``/``stop`` and ``aopen_stream`` -> a
``StreamSession`` with ``apush``/``aend``/``cancel`` and the stream's events as an async iterator (partials, finals,
then the end).

What it serves: any sample rate (channels averaged, then resampled to 16 kHz per stream on the event loop thread:
16 kHz mono clients cost the least), one decoder (CTC or RNNT, ``--decoder``) and one
lookahead (``--lookahead-ms``) chosen at start (a client asking for another is refused), endpointing and interim
results per stream as the general path. Events go to the event loop in one hand-over per step, never one per stream. A full stream queue (the
worker behind) holds the client's pushes (TCP back-pressure), it is not an error. Streams that end are stepped
to their end by the worker, all those ending at once in one batch (``bulk_flush``): one at a time, each end is a
few launch-bound steps of batch one.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import math
import queue
import sys
import threading
import time

from typing import Callable

import numpy as np

from legato.asr.endpointing import Endpointing
from legato.asr.fastconformer.bulk import BulkStream, BulkTranscriber
from legato.asr.fastconformer.bulk_graphs import MAX_GRAPH_ROWS
from legato.asr.fastconformer.bulk_tokens import TokenUpdates
from legato.asr.fastconformer.stage import DEFAULT_MIN_SILENCE_MS
from legato.asr.fastconformer.recognizer import FastConformerRecognizer
from legato.asr.fastconformer.utterance_text import UtteranceText
from legato.stream.engine import UnknownRouteError
from legato.stream.errors import CapacityError, NonFiniteAudioError
from legato.stream.frames import AudioChunk, EndOfStream, ErrorEvent, Frame
from legato.stream.metrics import HistogramCounts, MetricsSnapshot
from legato.stream.resample import Resampler
from legato.stream.thread_cpu import ThreadCpu

log = logging.getLogger("legato.bulk")

SAMPLE_RATE = 16000
NO_ENDPOINT = np.iinfo(np.int64).max // 4
IDLE_S = 0.002  # worker nap when no chunk is complete
FULL_QUEUE_RETRY_S = 0.02  # a push into a full stream queue waits this long before trying again
GIL_SWITCH_S = 0.0005  # the engine process's GIL switch interval (Python's default: 5 ms)
WARM_UP_BATCHES = (1, 16, 17)  # batch sizes ``warm_up`` steps: Triton's integer specialisations (1, 16k, other)


class StreamAudio:
    """A client's audio as the model takes it: channels averaged, then resampled to 16 kHz (as ``read_audio``), on
    the thread that receives it; float32 mono arrays out."""

    def __init__(self, rate: int):
        self._resample = None if rate == SAMPLE_RATE else _resampler(rate).stream()

    def push(self, chunk: AudioChunk) -> np.ndarray:
        x = chunk.samples
        x = x.mean(dim=1, keepdim=True) if x.shape[1] > 1 else x
        if self._resample is not None:
            x = self._resample.push(x)
        return x[:, 0].numpy().astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        """The resampler's last outputs (offline's zero padding); none at 16 kHz."""
        if self._resample is None:
            return np.zeros(0, np.float32)
        return self._resample.flush()[:, 0].numpy().astype(np.float32, copy=False)


class HandleEvents:
    """A stream handle's events as the server's async iterator: the end of stream or an error is the last (an
    error the client did not cause by ending drops the stream)."""

    _out: asyncio.Queue
    _ending: bool
    finished: bool

    def cancel(self) -> None:
        raise NotImplementedError

    def __aiter__(self):
        return self

    async def __anext__(self) -> Frame:
        if self.finished:
            raise StopAsyncIteration
        frame = await self._out.get()
        if isinstance(frame, (EndOfStream, ErrorEvent)):
            if isinstance(frame, ErrorEvent) and not self._ending:
                self.cancel()
            self.finished = True
        return frame


class BulkHandle(HandleEvents):
    def __init__(self, engine: "BulkEngine", slot: int, stream_id: str, text: UtteranceText, rate: int):
        self.engine, self.slot, self.stream_id, self.text = engine, slot, stream_id, text
        self.audio = StreamAudio(rate)
        self.sink = engine.loop_sink(asyncio.get_running_loop())  # the worker's token updates, via the text thread
        self.finished = False
        self._out: asyncio.Queue[Frame] = asyncio.Queue()
        self._ending = False

    async def apush(self, chunk: AudioChunk) -> None:
        if self._ending:
            return
        await self._push(self.audio.push(chunk))

    async def _push(self, mono: np.ndarray) -> None:
        while True:
            try:
                self.engine.bulk.push(self.slot, mono)
                return
            except CapacityError:  # the worker is behind: hold this client (back-pressure), keep the audio
                await asyncio.sleep(FULL_QUEUE_RETRY_S)
            except NonFiniteAudioError as exc:
                self._fail("non_finite_audio", str(exc))
                return

    async def aend(self) -> None:
        """No more audio: the worker steps what is queued and then the stream's end, batched with the other streams
        ending then; its final text and the end of stream follow on the iterator."""
        if self._ending:
            return
        self._ending = True
        await self._push(self.audio.flush())
        self.engine._end(self)

    def cancel(self) -> None:
        """Drop the stream (its client went away): the worker frees its slot between two steps."""
        if not self._ending:
            self._ending = True
            self.engine._forget(self)
            self.engine.request_cancel(self.slot)
        self.finished = True

    def _fail(self, code: str, message: str) -> None:
        self._out.put_nowait(ErrorEvent(code, message, "bulk"))


class BulkEngine:
    """``Engine``'s face for ``TranscriptionServer``, over one ``BulkTranscriber``."""

    def __init__(self, name: str, recognizer: FastConformerRecognizer, *, capacity: int, max_batch: int = 4096,
                 lookahead_ms: int | None = None, decoder: str | None = None, stats_every_s: float | None = None,
                 graph_rows: int = MAX_GRAPH_ROWS, pipeline: bool = True):
        """``decoder``: "ctc" or "rnnt" (None: the model's own, RNNT for a hybrid); ``lookahead_ms``: the one
        lookahead served (None: the model's first); ``stats_every_s``: log a line of what the worker did (streams,
        chunks/s, batch sizes, its busy share, step and chunk-latency quantiles) this often at INFO (None: never);
        ``graph_rows``: steps of up to this many rows replay CUDA graphs (all captured by ``warm_up``);
        ``pipeline``: each step's host work overlaps the device's (``BulkTranscriber(pipeline=)``, CTC)."""
        self.frontend_counters: dict[int, MetricsSnapshot] = {}  # front end -> its server's counters (--frontends)
        if recognizer.tokenizer is None:
            raise ValueError("the bulk server needs the model's tokenizer (words)")
        self.routes = [name]
        self.recognizer = recognizer
        self.bulk = BulkTranscriber(recognizer, capacity, lookahead_ms=lookahead_ms, max_batch=max_batch, decoder=decoder,
                                    on_step=self._on_step, on_finish=self._on_finish, keep_tokens=False, graph_rows=graph_rows,
                                    pipeline=pipeline)
        self.lookahead_ms = recognizer.lookaheads_ms[self.bulk.lookahead]
        self._handles: dict[int, BulkHandle] = {}
        self._endpoint = np.full(capacity, NO_ENDPOINT, np.int64)  # encoder frames of silence that end an utterance
        self._open = np.zeros(capacity, bool)  # the slot's utterance has tokens
        self._last_token = np.zeros(capacity, np.int64)  # encoder frame of its last token
        self._live = np.zeros(capacity, bool)  # the slot has a registered handle
        self._sink_of = np.zeros(capacity, np.int64)  # index of its handle's sink in _sink_list
        self._sink_list: list = []
        self._text_queue: queue.Queue = queue.Queue()  # (loop, updates, handles) for the text thread
        self._text: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        # opens and cancels, done by the worker between two steps: from another thread they would wait for the step
        # lock (the event loop must not), and a thread opening one stream at a time could starve behind back-to-back
        # steps; the worker opens every waiting stream in one call
        self._requests: collections.deque = collections.deque()
        self._sinks: dict = {}
        self.stats_every_s = stats_every_s
        self.stats_lines: list = []  # more ``() -> str`` for the stats line (the front ends' pipes)
        self._refused_logged = 0
        self._cpu = ThreadCpu()  # the stats line's per-thread CPU: a slow step short of CPU or waiting (GIL, GPU)

    # -- Engine's interface ----------------------------------------------------------

    def start(self) -> "BulkEngine":
        if self._worker is None:
            # a thread wanting the GIL waits up to the switch interval for the holder to drop it; the stepping
            # thread retakes it after every CUDA call, so with pipe readers and event loops in the same process the
            # default 5 ms made steps several times slower. Process-wide: the shorter wait costs the others little.
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
            self._stop.clear()
            self._text = threading.Thread(target=self._text_work, name="legato-bulk-text", daemon=True)
            self._text.start()
            self._worker = threading.Thread(target=self._work, name="legato-bulk-worker", daemon=True)
            self._worker.start()
        return self

    def warm_up(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Compile before serving: steps of throwaway streams at the batch sizes the GPU kernels specialise on
        (Triton compiles a variant for 1, for multiples of 16 and for the rest), first and later steps and
        batched ends, then every CUDA graph bucket. Each variant's first launch compiles for seconds (8 s for
        the first on an H200): a server doing that with clients connected stalls every stream. Call before
        ``start``; nothing reaches a sink. ``progress(done, total)`` after each batch size and the graph capture."""
        rng = np.random.default_rng(0)
        total = len(WARM_UP_BATCHES) + 1
        for k, n in enumerate(WARM_UP_BATCHES):
            n = min(n, self.bulk.capacity)
            slots = self.bulk.open_many(n)
            for _ in range(2):
                self.bulk.push_many(slots, rng.standard_normal((n, self.bulk.chunk)).astype(np.float32) * 0.01)
                self.bulk.step()
            for s in slots.tolist():
                self.bulk.push(s, np.zeros(self.bulk.chunk // 3, np.float32))
                self.bulk.end(s)
            while self.bulk.in_use:
                self.bulk.step()
            if progress is not None:
                progress(k + 1, total)
        if self.bulk.graphs is not None:
            self.bulk.graphs.capture_all()
        if progress is not None:
            progress(total, total)
        self.bulk.windows.read()
        self.bulk.latencies(clear=True)

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        if self._text is not None:
            self._text_queue.put(None)
            self._text.join()
            self._text = None

    def _check(self, options: dict | None, route: str | None) -> dict:
        opts = dict(options or {})
        if route is not None and route not in self.routes:
            raise UnknownRouteError(f"unknown model {route!r}; this engine serves: {', '.join(self.routes)}")
        _resampler(opts.get("sample_rate", SAMPLE_RATE))  # SampleRateError (a ValueError) for a rate it cannot take
        if opts.get("lookahead_ms", self.lookahead_ms) != self.lookahead_ms:
            raise ValueError(f"this bulk server runs lookahead_ms={self.lookahead_ms} only")
        if opts.get("decoder", self.bulk.decoder) != self.bulk.decoder:
            raise ValueError(f"this bulk server runs the {self.bulk.decoder} decoder only")
        return opts

    async def aopen_stream(self, budget_s: float | None = None, options: dict | None = None, stream_id: str | None = None,
                           route: str | None = None) -> BulkHandle:
        """Open a stream (the worker opens it between two steps, with every other waiting one). Raises
        UnknownRouteError, CapacityError when every slot is taken, ValueError for options the bulk path cannot
        honour (another sample rate, lookahead or decoder)."""
        opts = self._check(options, route)
        slot = await asyncio.wrap_future(self.request_open())  # CapacityError when every slot is taken
        handle = BulkHandle(self, slot, stream_id or f"bulk-{slot}", UtteranceText(bool(opts.get("interim_results", True))),
                            opts.get("sample_rate", SAMPLE_RATE))
        self.register(slot, handle, opts)
        return handle

    def loop_sink(self, loop: asyncio.AbstractEventLoop):
        """One sink per event loop: a step's token updates for all its streams go to the text thread in one item,
        and their events to the loop in one call."""
        with self._lock:
            if loop not in self._sinks:
                self._sinks[loop] = lambda updates, handles: self._text_queue.put((loop, updates, handles))
            return self._sinks[loop]

    def _text_work(self) -> None:
        """Token updates -> text events, off the stepping thread (it overlaps the GPU's next step)."""
        tokenizer, frame_s = self.recognizer.tokenizer, self.recognizer.frame_s
        while (item := self._text_queue.get()) is not None:
            loop, updates, handles = item
            out: list[tuple[BulkHandle, Frame]] = []
            for h, (_, tokens, frames, final, end) in zip(handles, updates.rows()):
                out += [(h, e) for e in h.text.update(tokenizer, frame_s, tokens, frames, final)]
                if end:
                    out.append((h, EndOfStream()))
            if out:
                loop.call_soon_threadsafe(_deliver, out)

    def request_open(self) -> concurrent.futures.Future:
        """A slot, opened by the worker between two steps (the future's exception: CapacityError)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._requests.append(("open", None, future))
        return future

    def request_cancel(self, slot: int) -> None:
        self._requests.append(("cancel", slot, None))

    def register(self, slot: int, handle, opts: dict) -> None:
        """Route the slot's token updates to ``handle``: ``.sink(updates, handles)`` takes a step's
        ``TokenUpdates`` for its streams (and their handles, row by row) on the worker thread and hands them on
        without blocking; ``._fail(code, message)``."""
        endpoint = Endpointing.from_options(opts, DEFAULT_MIN_SILENCE_MS).frames(self.recognizer.frame_s) or NO_ENDPOINT
        with self._lock:
            if handle.sink not in self._sink_list:
                self._sink_list.append(handle.sink)
            self._handles[slot] = handle
            self._endpoint[slot], self._open[slot], self._live[slot] = endpoint, False, True
            self._sink_of[slot] = self._sink_list.index(handle.sink)

    # -- the worker ------------------------------------------------------------------

    def _work(self) -> None:
        next_stats = time.monotonic() + (self.stats_every_s or math.inf)
        while not self._stop.is_set():
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.stats_every_s
                log.info("%s", self.stats_line())
            served = self._serve_requests()
            try:
                stepped = self.bulk.step()
            except Exception:  # noqa: BLE001 - a failed step must not stop the server; its chunks are lost
                log.exception("bulk step failed")
                stepped = 0
            if not stepped and not served:
                self._stop.wait(IDLE_S)
        self.bulk.settle()
        self._serve_requests(closing=True)

    async def ametrics(self) -> MetricsSnapshot:
        return self.metrics_snapshot()

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Its streams, chunks waiting, chunks stepped and their latency (push to tokens), by its one route; with
        front ends, their servers' last counters too (``frontend_counters``)."""
        bulk, name = self.bulk, self.routes[0]
        snap = self._own_snapshot(bulk, name)
        for counters in list(self.frontend_counters.values()):
            snap = snap.merge(counters)
        snap.servers_included = bool(self.frontend_counters)
        return snap

    @staticmethod
    def _own_snapshot(bulk, name: str) -> MetricsSnapshot:
        return MetricsSnapshot(open_streams={name: bulk.in_use}, queued_frames={"bulk": bulk.queues.waiting()},
                               frames_in={"bulk": int(bulk.latency_s.count)}, latency_s={name: HistogramCounts.of(bulk.latency_s)})

    def stats_line(self) -> str:
        """What the worker did since the last call, and where the streams stand now."""
        refused = self.bulk.queues.refused
        head = (f"bulk: {self.bulk.in_use:,} streams, {self.bulk.queues.waiting():,} chunks waiting, "
                f"{refused - self._refused_logged:,} pushes refused (queue full); {self.bulk.windows.read().line()}")
        self._refused_logged = refused
        return "; ".join([head] + [f() for f in self.stats_lines] + ([self._cpu.line()] if self._cpu.available else []))

    def _serve_requests(self, closing: bool = False) -> int:
        """Cancels, then every waiting open in one call (those past capacity get CapacityError)."""
        requests = []
        while self._requests:
            requests.append(self._requests.popleft())
        opens = [future for kind, _, future in requests if kind == "open"]
        for kind, slot, _ in requests:
            if kind == "cancel":
                try:
                    self.bulk.cancel(slot)
                except KeyError:  # ended or cancelled already
                    pass
        if opens:
            free = 0 if closing else self.bulk.capacity - self.bulk.in_use
            slots = self.bulk.open_many(min(free, len(opens))) if free else []
            for future, slot in zip(opens, slots):
                future.set_result(int(slot))
            for future in opens[len(slots):]:
                future.set_exception(CapacityError(f"bulk server is full ({self.bulk.capacity} streams)"))
        return len(requests)

    def _on_step(self, stepped: np.ndarray, new: TokenUpdates) -> None:
        """The step's new tokens and utterance ends (endpointing), to the sinks in one call per sink, in array
        operations: no Python per stream on the stepping thread. Words and events are built by the sink's side."""
        with self._lock:
            new = new.select(self._live[new.slots])
            self._open[new.slots] = True
            self._last_token[new.slots] = new.last_frames()
            silent = self.bulk.frames_decoded(stepped) - 1 - self._last_token[stepped]
            ending = stepped[self._live[stepped] & self._open[stepped] & (silent >= self._endpoint[stepped])]
            self._open[ending] = False
            updates = new.with_finals(ending)
            self._hand_over(updates)

    def _on_finish(self, done: list[tuple[int, BulkStream]]) -> None:
        """The last tokens, the final and the end of stream of the streams whose last steps just ran."""
        with self._lock:
            done = [(slot, stream) for slot, stream in done if self._live[slot]]
            updates = TokenUpdates.from_lists([slot for slot, _ in done], [st.tokens for _, st in done],
                                              [st.token_frames for _, st in done], final=True, end=True, keep_empty=True)
            self._hand_over(updates)
            for slot, _ in done:
                self._live[slot] = False
                del self._handles[slot]

    def _hand_over(self, updates: TokenUpdates) -> None:
        """Each sink's rows, with their handles (lock held)."""
        if not len(updates):
            return
        sink_of = self._sink_of[updates.slots]
        for i in np.unique(sink_of).tolist():
            part = updates.select(sink_of == i)
            self._sink_list[i](part, list(map(self._handles.get, part.slots.tolist())))

    def _end(self, h) -> None:
        try:
            self.bulk.end(h.slot)
        except KeyError:  # cancelled meanwhile
            h._fail("stream_closed", "the stream was closed")

    def _forget(self, h) -> None:
        with self._lock:
            if self._handles.get(h.slot) is h:
                del self._handles[h.slot]
                self._live[h.slot] = False


@functools.lru_cache(maxsize=16)
def _resampler(rate: int) -> Resampler:
    return Resampler(rate, SAMPLE_RATE)


def _deliver(out: list[tuple[BulkHandle, Frame]]) -> None:
    for h, frame in out:
        h._out.put_nowait(frame)
