"""The engine: sessions push frames, workers batch stages across streams and across routes.

Shape of the machine::

    push() ──▶ [stage 0 queue] ─▶ stage 0 ─▶ [stage 1 queue] ─▶ ... ─▶ [output queue] ──▶ get()
               one bounded queue per stream per stage              one bounded queue per stream

* The engine serves one or more *routes*: named pipelines (each ASR model,
  each TTS voice). A stream opens on one route and passes through its stages.
  All routes' stages are scheduled together: one worker thread per device
  runs every stage on that device, whichever route it belongs to, so ASR and
  TTS share the GPU under one earliest-deadline-first policy. A stage object
  may appear in several routes; streams of all of them then batch together.
* A worker repeatedly picks a stage whose ready streams should step now
  (``scheduler.decide``: full batch, everyone ready, or the earliest deadline
  would otherwise be missed), takes one frame from each of up to
  ``max_batch`` ready streams (earliest deadline first), runs the stage, and
  routes outputs to each stream's next stage.
* The worker keeps, per stage, the streams with queued input, and scans only
  those; a push wakes it only when that can change its decision (the stage
  was idle, its batch is full or complete, or the input is due first).
* A stream is ready for a stage only if the queue *after* the stage has room,
  so a slow consumer stalls its own stream back to ``push``, which blocks (or
  awaits) instead of dropping audio. Queues may overshoot their bound by the
  frames one step emits.
* A frame's deadline is the time its input was pushed plus the stream's
  latency budget; outputs inherit it. A generating stage's stream
  (``Stage.pending``) is ready without input; its ``Tick`` is due one budget
  after the stream's previous step on that stage.
* A stage reports one stream's failure by returning the exception in that
  stream's place; if a stage raises on a whole batch, each stream of the
  batch is retried alone. A stream that fails gets an ``ErrorEvent`` and
  ends; the others go on.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from legato.stream import scheduler
from legato.stream.errors import CapacityError, ClosedError, LegatoError
from legato.stream.frames import AudioChunk, EndOfStream, ErrorEvent, Frame, Tick
from legato.stream.graph import Stage, StreamInfo
from legato.stream.intra_op import parallel_worker
from legato.stream.metrics import Histogram, HistogramCounts, MetricsSnapshot, StageMetrics

DEFAULT_MAX_STREAMS = 256
DEFAULT_QUEUE_FRAMES = 16  # per stream per stage
DEFAULT_OUTPUT_FRAMES = 256  # per stream, frames waiting for the client
DEFAULT_BUDGET_S = 1.0
# Longest audio frame a stage is given: a longer pushed AudioChunk enters as pieces of this length. One frame is one
# stream's share of one batched step, so its size bounds what one stream can make the others in its batch wait for
# (a client that sends 32 s of audio in one message otherwise held a paced stream's batch for a whole 30 s decode).
MAX_FRAME_S = 0.5


class UnknownRouteError(LegatoError, KeyError):
    code = "unknown_model"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class _Item:
    frame: Frame
    deadline: float  # monotonic seconds
    arrival: float  # when the input it came from was pushed
    enqueued: float  # when it entered its current queue


@dataclass
class _StreamEntry:
    """The engine's record of one open stream: its queues and contexts, one per stage of its route (``path`` maps a
    position to the engine's stage)."""

    info: StreamInfo
    route: str
    path: list[int]
    contexts: list[Any]
    queues: list[deque]
    out: deque = field(default_factory=deque)
    open: list[bool] = field(default_factory=list)  # stage still has this stream's context
    in_flight: list[bool] = field(default_factory=list)
    tick_due: list[float] = field(default_factory=list)  # deadline of a generating stage's next Tick
    input_closed: bool = False  # EndOfStream pushed (or cancelled)
    finished: bool = False  # last frame (EndOfStream or ErrorEvent) is in ``out``
    waiters: list = field(default_factory=list)  # asyncio (loop, future) pairs


class Engine:
    """Runs pipelines for many concurrent streams. Use as a context manager or start()/stop().

    ``routes`` is one pipeline (a single route named after it) or ``{name: pipeline}``;
    the first route is the default of ``open_stream``.
    """

    def __init__(
        self,
        routes: Stage | Mapping[str, Stage],
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        queue_frames: int = DEFAULT_QUEUE_FRAMES,
        output_frames: int = DEFAULT_OUTPUT_FRAMES,
        default_budget_s: float = DEFAULT_BUDGET_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if isinstance(routes, Stage):
            routes = {routes.name: routes}
        if not routes:
            raise ValueError("an engine needs at least one route")
        self.stages: list[Stage] = []
        self.routes: dict[str, list[int]] = {}
        index: dict[int, int] = {}  # id(stage) -> position in self.stages
        owner: list[str] = []
        for route, pipeline in routes.items():
            path = []
            for stage in pipeline.flatten():
                if id(stage) not in index:
                    index[id(stage)] = len(self.stages)
                    self.stages.append(stage)
                    owner.append(route)
                if index[id(stage)] in path:
                    raise ValueError(f"route {route!r} passes stage {stage.name!r} twice")
                path.append(index[id(stage)])
            self.routes[route] = path
        self.default_route = next(iter(self.routes))
        names = [s.name for s in self.stages]
        # Metric names: a stage's own name, or "route/name" where two routes have distinct stages of one name.
        self.stage_names = [n if names.count(n) == 1 else f"{owner[k]}/{n}" for k, n in enumerate(names)]
        if len(set(self.stage_names)) != len(self.stage_names):
            raise ValueError(f"stage names must be unique within a route, got {self.stage_names}")
        self.max_streams, self.queue_frames, self.output_frames = max_streams, queue_frames, output_frames
        self.default_budget_s = default_budget_s
        self.clock = clock
        self.stage_metrics = [StageMetrics(max_batch=s.max_batch) for s in self.stages]
        self.end_to_end_s = Histogram.latency()
        self.route_latency_s = {route: Histogram.latency() for route in self.routes}  # end to end, per route
        self.step_times = [scheduler.StepTimeModel() for _ in self.stages]
        self._streams: dict[str, _StreamEntry] = {}
        self._members: list[dict[str, tuple[_StreamEntry, int]]] = [{} for _ in self.stages]  # streams open on each stage
        # streams with input queued at each stage: the pick scans these, not every open stream
        self._queued: list[dict[str, tuple[_StreamEntry, int]]] = [{} for _ in self.stages]
        self._generating = [type(s).pending is not Stage.pending for s in self.stages]  # may be ready without input
        self._earliest = [float("inf")] * len(self.stages)  # earliest queued deadline per stage at the last pick
        self._waiting = 0  # workers asleep on the condition (a push may need to wake one)
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- life cycle ---------------------------------------------------------

    def start(self) -> "Engine":
        if self._threads:
            return self
        self._stopping = False
        for device in dict.fromkeys(s.device for s in self.stages):
            t = threading.Thread(target=self._worker, args=(device,), name=f"legato-worker-{device}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        self._threads.clear()
        for sid in list(self._streams):
            self._cancel(sid)

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- streams -------------------------------------------------------------

    @property
    def active_streams(self) -> int:
        with self._cond:
            return len(self._streams)

    def load(self) -> tuple[dict[str, int], dict[str, int]]:
        """Now: open streams per route, and frames queued per stage (by metric name)."""
        streams = {route: 0 for route in self.routes}
        queued = [0] * len(self.stages)
        with self._cond:
            for e in self._streams.values():
                if e is None:  # a seat reserved while its stream opens
                    continue
                streams[e.route] += 1
                for i, q in enumerate(e.queues):
                    queued[e.path[i]] += len(q)
        return streams, dict(zip(self.stage_names, queued))

    def route_stages(self, route: str) -> list[Stage]:
        return [self.stages[k] for k in self.routes[route]]

    def open_stream(self, budget_s: float | None = None, options: dict | None = None, stream_id: str | None = None,
                    route: str | None = None) -> "StreamHandle":
        """Open a stream on every stage of ``route`` (default: the first route).

        Raises UnknownRouteError for a route the engine does not serve, CapacityError past ``max_streams`` or a full pool."""
        route = route or self.default_route
        if route not in self.routes:
            raise UnknownRouteError(f"unknown model {route!r}; this engine serves: {', '.join(self.routes)}")
        path = self.routes[route]
        info = StreamInfo(stream_id or uuid.uuid4().hex[:12], budget_s or self.default_budget_s, dict(options or {}))
        with self._cond:
            if len(self._streams) >= self.max_streams:
                raise CapacityError(f"engine is serving its maximum of {self.max_streams} streams")
            if info.stream_id in self._streams:
                raise ValueError(f"stream id {info.stream_id!r} is already open")
            self._streams[info.stream_id] = None  # type: ignore[assignment]  # reserve the id and the seat
        contexts: list[Any] = []
        try:
            for k in path:  # all stages, or none: a failed open closes the rest
                contexts.append(self.stages[k].open(info))
        except BaseException:
            for k, ctx in zip(path, contexts):
                self.stages[k].close(ctx)
            with self._cond:
                del self._streams[info.stream_id]
            raise
        n = len(path)
        entry = _StreamEntry(info, route, path, contexts, [deque() for _ in range(n)], open=[True] * n, in_flight=[False] * n, tick_due=[0.0] * n)
        with self._cond:
            self._streams[info.stream_id] = entry
            for i, k in enumerate(path):
                self._members[k][info.stream_id] = (entry, i)
        return StreamHandle(self, info, entry)

    async def aopen_stream(self, budget_s: float | None = None, options: dict | None = None, stream_id: str | None = None,
                           route: str | None = None) -> "StreamHandle":
        """``open_stream`` for servers (``stream/service.py``'s contract): opening never waits here."""
        return self.open_stream(budget_s, options, stream_id, route)

    def _cancel(self, stream_id: str) -> None:
        with self._cond:
            entry = self._streams.get(stream_id)
            if entry is None:  # unknown, or still opening
                return
            entry.input_closed = True
            self._end(entry, None)

    # -- called with the lock held ---------------------------------------------

    def _wake(self, entry: _StreamEntry, notify: bool = True) -> None:
        """Resolve the stream's asyncio waiters and (unless the caller notifies once for many streams) wake threads."""
        for loop, fut in entry.waiters:
            loop.call_soon_threadsafe(_resolve, fut)
        entry.waiters.clear()
        if notify:
            self._cond.notify_all()

    def _enqueue(self, entry: _StreamEntry, i: int, item: _Item) -> None:
        entry.queues[i].append(item)
        self._queued[entry.path[i]][entry.info.stream_id] = (entry, i)

    def _push_wakes(self, entry: _StreamEntry, item: _Item) -> bool:
        """Whether new input must wake the worker now, rather than at the time it already set for itself: the stage
        had nothing queued, its batch is now full or complete, or this input is due before everything queued."""
        if not self._waiting:
            return False  # every worker is stepping; each picks again afterwards
        k = entry.path[0]
        queued, stage = len(self._queued[k]), self.stages[k]
        return queued == 1 or queued >= min(stage.max_batch, len(self._members[k])) or item.deadline < self._earliest[k]

    def _close_stage(self, entry: _StreamEntry, i: int) -> None:
        if entry.open[i] and not entry.in_flight[i]:
            entry.open[i] = False
            k = entry.path[i]
            self._members[k].pop(entry.info.stream_id, None)
            self._queued[k].pop(entry.info.stream_id, None)
            try:
                self.stages[k].close(entry.contexts[i])
            except Exception:  # closing must never take the engine down
                pass

    def _end(self, entry: _StreamEntry, last: Frame | None) -> None:
        """Finish a stream: drop queued input, close stages not mid-step, deliver ``last``."""
        for i, q in enumerate(entry.queues):
            q.clear()
            self._queued[entry.path[i]].pop(entry.info.stream_id, None)
            self._close_stage(entry, i)
        if not entry.finished:
            entry.finished = True
            if last is not None:
                entry.out.append(last)
        if not any(entry.open):
            self._streams.pop(entry.info.stream_id, None)
        self._wake(entry)

    def _has_room_after(self, entry: _StreamEntry, i: int) -> bool:
        if i == len(entry.path) - 1:
            return len(entry.out) < self.output_frames
        return len(entry.queues[i + 1]) < self.queue_frames

    def _pick(self, stage_ids: list[int], now: float):
        best, best_deadline, wait = None, float("inf"), float("inf")
        for k in reversed(stage_ids):  # downstream first (within a route): drain before filling
            stage = self.stages[k]
            # every open member is active: a finished stream leaves its stages at once unless mid-step, and no step
            # of this worker runs while it picks
            active = len(self._members[k])
            ready: list[tuple[float, _StreamEntry, int]] = []
            for e, i in (self._members[k] if self._generating[k] else self._queued[k]).values():
                if e.finished:
                    continue
                if not self._has_room_after(e, i):
                    continue
                if e.queues[i]:
                    ready.append((e.queues[i][0].deadline, e, i))
                elif stage.pending(e.contexts[i]):
                    ready.append((e.tick_due[i], e, i))
            if not ready:
                self._earliest[k] = float("inf")
                continue
            ready.sort(key=lambda r: r[0])
            earliest, first, at = ready[0]
            self._earliest[k] = earliest
            downstream = sum(self.step_times[j].estimate(1) for j in first.path[at + 1 :])  # the earliest stream's later stages
            n = min(len(ready), stage.max_batch)
            decision = scheduler.decide(
                ready=len(ready),
                active=active,
                max_batch=stage.max_batch,
                earliest_deadline=earliest,
                now=now,
                step_s=self.step_times[k].estimate(n),
                downstream_s=downstream,
            )
            if decision.run and earliest < best_deadline:
                best, best_deadline = (k, [(e, i) for _, e, i in ready[: stage.max_batch]]), earliest
            elif not decision.run:
                wait = min(wait, decision.wait_s)
        return best, wait

    # -- workers ---------------------------------------------------------------

    def _worker(self, device: str) -> None:
        # The CPU worker's OpenMP team does the CPU model work; a GPU worker's CPU ops are small and stay serial,
        # so the process has one team (stream/intra_op.py).
        parallel_worker(None if device == "cpu" else 1)
        stage_ids = [k for k, s in enumerate(self.stages) if s.device == device]
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = self.clock()
                    choice, wait = self._pick(stage_ids, now)
                    if choice is not None:
                        break
                    self._waiting += 1
                    try:
                        self._cond.wait(None if wait == float("inf") else wait)
                    finally:
                        self._waiting -= 1
                k, members = choice
                items = [_take(e.queues[i], join=i == 0) if e.queues[i] else _Item(Tick(), e.tick_due[i], now, now) for e, i in members]
                for e, i in members:
                    if not e.queues[i]:
                        self._queued[k].pop(e.info.stream_id, None)
                    e.in_flight[i] = True
                    self._wake(e)  # room freed: a blocked push or upstream may go on
            self._run(k, members, items)

    def _run(self, k: int, members: list[tuple[_StreamEntry, int]], items: list[_Item]) -> None:
        stage, metrics = self.stages[k], self.stage_metrics[k]
        start = self.clock()
        metrics.queue_wait_s.record_many([start - it.enqueued for it in items])
        results: list[list[Frame] | BaseException]  # an exception in an item's place fails that stream
        try:
            results = list(stage.process([(e.contexts[i], it.frame) for (e, i), it in zip(members, items)]))
            if len(results) != len(items):
                raise RuntimeError(f"stage {stage.name} returned {len(results)} results for {len(items)} inputs")
        except Exception as exc:
            if len(items) == 1:
                results = [exc]
            else:  # find the stream(s) at fault; the step committed no state
                results = []
                for (e, i), it in zip(members, items):
                    try:
                        results.append(stage.process([(e.contexts[i], it.frame)])[0])
                    except Exception as single:
                        results.append(single)
        elapsed = self.clock() - start
        self.step_times[k].record(len(items), elapsed)
        metrics.compute_s.record(elapsed)
        metrics.batch_size.record(len(items))
        metrics.frames_in += len(items)
        delivered: dict[str, list[float]] = {}  # end-to-end latencies of frames leaving the last stage, by route
        with self._cond:
            now = self.clock()
            for (e, i), it, res in zip(members, items, results):
                e.in_flight[i] = False
                e.tick_due[i] = now + e.info.budget_s
                if e.finished:  # cancelled or failed elsewhere while this step ran
                    self._close_stage(e, i)
                    self._end(e, None)
                    continue
                if isinstance(res, BaseException):
                    metrics.failures += 1
                    self._end(e, _error_event(res, stage.name))
                    continue
                self._route(e, i, it, res, now, delivered)
            self._cond.notify_all()  # once for the whole step (routing woke only asyncio waiters)
        for route, latencies in delivered.items():
            self.route_latency_s[route].record_many(latencies)
            self.end_to_end_s.record_many(latencies)

    def _route(self, e: _StreamEntry, i: int, it: _Item, frames: list[Frame], now: float, delivered: dict[str, list[float]]) -> None:
        last_stage = i == len(e.path) - 1
        self.stage_metrics[e.path[i]].frames_out += len(frames)
        for frame in frames:
            if last_stage:
                if isinstance(frame, EndOfStream):
                    self._close_stage(e, i)
                    self._end(e, frame)
                    return
                e.out.append(frame)
                delivered.setdefault(e.route, []).append(now - it.arrival)
            else:
                self._enqueue(e, i + 1, _Item(frame, it.deadline, it.arrival, now))
                if isinstance(frame, EndOfStream):
                    self._close_stage(e, i)
        self._wake(e, notify=False)

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Everything ``/metrics`` reports of this engine; its servers add their counters (errors are counted there,
        where every stream's error reaches its client)."""
        streams, queued = self.load()
        snap = MetricsSnapshot(open_streams=streams, queued_frames=queued)
        for name, m in zip(self.stage_names, self.stage_metrics):
            snap.frames_in[name], snap.frames_out[name], snap.failures[name] = m.frames_in, m.frames_out, m.failures
            snap.step_s[name] = HistogramCounts.of(m.compute_s)
            snap.batch_size[name] = HistogramCounts.of(m.batch_size)
            snap.queue_wait_s[name] = HistogramCounts.of(m.queue_wait_s)
        snap.latency_s = {route: HistogramCounts.of(h) for route, h in self.route_latency_s.items()}
        return snap

    async def ametrics(self) -> MetricsSnapshot:
        return self.metrics_snapshot()

    def metrics(self) -> dict:
        """Snapshot: per-stage histograms (queue wait, compute, batch size) and end-to-end latency."""
        return {
            "stages": {name: m.summary() for name, m in zip(self.stage_names, self.stage_metrics)},
            "end_to_end_s": self.end_to_end_s.summary(),
            "active_streams": self.active_streams,
        }


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _error_event(exc: BaseException, stage: str) -> ErrorEvent:
    code = exc.code if isinstance(exc, LegatoError) else "stage_failed"
    return ErrorEvent(code=code, message=f"{type(exc).__name__}: {exc}", stage=stage)


def _frame_samples(sample_rate: int) -> int:
    """``MAX_FRAME_S`` in samples at this rate."""
    return max(1, int(MAX_FRAME_S * sample_rate))


def _take(queue: deque, join: bool) -> _Item:
    """The queue's next input for a step; in a route's first queue (what clients pushed), consecutive AudioChunks are
    joined up to ``MAX_FRAME_S``.

    Fair share is counted in audio time, not frames: a step gives every stream in its batch up to ``MAX_FRAME_S``
    of its queued audio. One frame a step would let a client that sends big messages move ahead by seconds per step
    while a paced stream sending 100 ms messages moved 100 ms, its backlog growing with every step the other's work
    made slow (a paced 2.9 s stream took 37 s beside one unpaced client). The joined item keeps the first
    frame's deadline and arrival (the latency of its oldest audio)."""
    item = queue.popleft()
    if not join or not isinstance(item.frame, AudioChunk):
        return item
    first = item.frame
    limit = _frame_samples(first.sample_rate)
    parts, n = [first.samples], first.num_samples
    while queue and isinstance(nxt := queue[0].frame, AudioChunk) and nxt.sample_rate == first.sample_rate \
            and nxt.channels == first.channels and n + nxt.num_samples <= limit:
        queue.popleft()
        parts.append(nxt.samples)
        n += nxt.num_samples
    if len(parts) == 1:
        return item
    return _Item(AudioChunk(torch.cat(parts), first.sample_rate, first.start_sample), item.deadline, item.arrival, item.enqueued)


def _pieces(frame: Frame) -> list[Frame]:
    """``frame``, or an AudioChunk longer than ``MAX_FRAME_S`` cut into consecutive pieces no longer than that."""
    if not isinstance(frame, AudioChunk):
        return [frame]
    step = _frame_samples(frame.sample_rate)
    if frame.num_samples <= step:
        return [frame]
    return [AudioChunk(frame.samples[i:i + step], frame.sample_rate, frame.start_sample + i) for i in range(0, frame.num_samples, step)]


class StreamHandle:
    """One stream's door into the engine: push input, get output (sync or async)."""

    def __init__(self, engine: Engine, info: StreamInfo, entry: _StreamEntry):
        self.engine, self.info, self._e = engine, info, entry

    @property
    def stream_id(self) -> str:
        return self.info.stream_id

    @property
    def finished(self) -> bool:
        return self._e.finished and not self._e.out

    def _try_push(self, frame: Frame) -> bool:
        e, eng = self._e, self.engine
        if e.input_closed or e.finished:
            raise ClosedError(f"stream {self.stream_id} has ended; no more input is accepted")
        if len(e.queues[0]) >= eng.queue_frames:
            return False
        now = eng.clock()
        item = _Item(frame, now + self.info.budget_s, now, now)
        eng._enqueue(e, 0, item)
        if isinstance(frame, EndOfStream):
            e.input_closed = True
        if isinstance(frame, EndOfStream) or eng._push_wakes(e, item):
            eng._cond.notify_all()
        return True

    def push(self, frame: Frame, timeout: float | None = None) -> None:
        """Queue a frame (audio longer than ``MAX_FRAME_S`` as several); blocks while the stream's input queue is
        full (back-pressure).

        Raises TimeoutError if no room within ``timeout`` and ClosedError after the end.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.engine._cond:
            for piece in _pieces(frame):
                while not self._try_push(piece):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"stream {self.stream_id}: input queue full for {timeout} s")
                    self.engine._cond.wait(left)

    def end(self, timeout: float | None = None) -> None:
        self.push(EndOfStream(), timeout)

    def get(self, timeout: float | None = None) -> Frame | None:
        """Next output frame, or None if none arrives within ``timeout`` or the stream is over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.engine._cond:
            while not self._e.out:
                if self._e.finished:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self.engine._cond.wait(left)
            frame = self._e.out.popleft()
            self.engine._cond.notify_all()  # output room: the last stage may run again
            return frame

    def results(self, timeout: float = 30.0) -> list[Frame]:
        """All remaining output up to and including the final EndOfStream/ErrorEvent."""
        out: list[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = self.get(timeout=max(0.0, deadline - time.monotonic()))
            if frame is None:
                if self.finished:
                    return out
                raise TimeoutError(f"stream {self.stream_id} did not finish within {timeout} s")
            out.append(frame)
            if isinstance(frame, (EndOfStream, ErrorEvent)):
                return out

    def cancel(self) -> None:
        """Abandon the stream: queued input is dropped and its state released."""
        self.engine._cancel(self.stream_id)

    # -- asyncio ---------------------------------------------------------------

    async def _wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._e.waiters.append((asyncio.get_running_loop(), fut))
        self.engine._cond.release()
        try:
            await fut
        finally:
            self.engine._cond.acquire()

    async def apush(self, frame: Frame) -> None:
        """Async push (audio longer than ``MAX_FRAME_S`` as several frames): awaits (without blocking the loop)
        while the input queue is full."""
        with self.engine._cond:
            for piece in _pieces(frame):
                while not self._try_push(piece):
                    await self._wait()

    async def aend(self) -> None:
        await self.apush(EndOfStream())

    async def aget(self) -> Frame | None:
        """Next output frame, or None once the stream is over."""
        with self.engine._cond:
            while not self._e.out:
                if self._e.finished:
                    return None
                await self._wait()
            frame = self._e.out.popleft()
            self.engine._cond.notify_all()
            return frame

    def __aiter__(self):
        return self

    async def __anext__(self) -> Frame:
        frame = await self.aget()
        if frame is None:
            raise StopAsyncIteration
        return frame
