"""``legato serve --bulk --frontends N``: WebSocket front ends in N processes around one bulk engine.

One asyncio loop spends about 0.3 ms per message in or out (WebSocket framing, protocol, JSON), so one process
carries a thousand or two paced 160 ms streams while the GPU path carries tens of thousands. Here N front-end
processes share the port (``SO_REUSEPORT``: the kernel spreads connections over them), each running the usual
``TranscriptionServer`` over a ``RemoteEngine`` (``process.py``); the engine process (model,
``BulkEngine``'s worker) talks to each over a pipe, streams named by their engine slot once opened:

* front end -> engine: ``open`` (key, options), ``audio`` (slots, chunks: whole model chunks, the front end
  having averaged channels, resampled and cut the client's messages; everything queued since the last send as two
  arrays), ``end`` (slot, the last partial chunk), ``cancel`` (slot);
* engine -> front end: ``setup`` (the tokenizer and frame length: the front end turns tokens into words, so
  that work is spread over the front ends, not done on the engine's stepping thread), ``opened`` / ``refused``
  (key; a capacity or option error), ``updates`` (one ``TokenUpdates`` per step per front end), ``error``.

One reader thread serves every link (``LinkReader``: few GIL handovers for the stepping thread to lose). It
pushes a message's chunks with one ``push_many`` (array operations, no Python per chunk). A chunk whose stream
queue is full (the worker behind on that stream) waits in the link's backlog while the reader goes on with the
next messages: a few streams far behind (their front end's pipe was full for a while) must not hold every other
stream's audio behind them. A full backlog stops the reading of that link's pipe: it fills, the front end's
``apush`` waits, the client's TCP backs up, as in one process. A front end that dies has its streams cancelled.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import queue
import socket
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from legato.asr.fastconformer.bulk_tokens import TokenUpdates
from legato.server.bulk_engine import BulkEngine
from legato.server.frontends.messages import (
    Audio, Cancel, End, MetricsReply, MetricsRequest, Open, Opened, Ready, Refused, ServerCounters, Setup, StreamError, Updates,
)
from legato.server.frontends.pipe import MessageReader, enlarge_buffers
from legato.server.frontends.process import frontend_main
from legato.stream.errors import CapacityError

log = logging.getLogger("legato.bulk")

BACKLOG_CHUNKS = 2048  # refused chunks a link holds (~20 MB) before its reader stops reading the pipe
BACKLOG_RETRY_S = 0.002  # with a backlog, the reader retries it this often (between pipe messages)
IDLE_WAIT_S = 0.1  # without one, the reader looks at the links this often (a closed one, a backlog filled by a push)
READY_TIMEOUT_S = 120


class _RemoteStream:
    """A stream of a front end, as the engine's worker sees it (its token updates go to the link's pipe)."""

    def __init__(self, link: "FrontendLink", slot: int):
        self.link, self.slot = link, slot
        self.sink = link.send_updates
        self.ending = False

    def _fail(self, code: str, message: str) -> None:  # on the link's reader thread (its end push)
        self.link.forget(self.slot)
        self.link._drop_backlog(self.slot)
        self.link.send(StreamError(self.slot, code, message))


class _End:
    """A stream's end waiting in the backlog behind its chunks."""

    def __init__(self, tail: np.ndarray):
        self.tail = tail


class FrontendLink:
    """The engine process's end of one front end's pipe: its requests read by ``LinkReader`` (one thread for every
    link), a writer thread for replies and events."""

    def __init__(self, engine: BulkEngine, conn, index: int):
        self.engine, self.conn, self.index = engine, conn, index
        self.sock = socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)  # a duplicate, read as a socket
        enlarge_buffers(self.sock)
        self._messages = MessageReader(self.sock)
        self.closed = False  # the front end went away (its streams were cancelled)
        self.ready = threading.Event()
        self._streams: dict[int, _RemoteStream] = {}  # slot -> stream (read and written under the engine's lock)
        self._accepts = np.zeros(engine.bulk.capacity, bool)  # slot: open here, not ending (audio for others is dropped)
        self._backlog: dict[int, collections.deque] = {}  # slot -> chunks (and its _End) refused for a full queue
        self._backlog_n = 0
        self._tried_at = -1  # the worker's step count at the last drain that left a backlog (no step since: no room)
        self._out: queue.Queue = queue.Queue()
        tokenizer = engine.recognizer.tokenizer
        self._out.put(Setup(tokenizer.model_proto, engine.recognizer.frame_s))
        self._msgs = self._chunks = 0  # audio messages and chunks read since the last stats line
        self._full_s = 0.0  # seconds the reader stopped reading for a full backlog since then
        engine.stats_lines.append(self.stats_line)
        self._writer = threading.Thread(target=self._write, name=f"legato-frontend-{index}-out", daemon=True)
        self._writer.start()

    def send_updates(self, updates: TokenUpdates, handles: list) -> None:
        """On the worker thread (engine lock held): one pipe message for a step's updates of this front end."""
        for slot in updates.slots[updates.end].tolist():
            self.forget(slot)
        self._out.put(Updates(updates))

    def send(self, msg: object) -> None:
        self._out.put(msg)

    def stats_line(self) -> str:
        """Front end i's audio since the last call (a backlog: the worker is behind on some streams)."""
        msgs, chunks, full = self._msgs, self._chunks, self._full_s
        self._msgs = self._chunks = 0
        self._full_s = 0.0
        return (f"front end {self.index}: {len(self._streams):,} streams, {chunks:,} chunks in {msgs:,} messages, "
                f"backlog {self._backlog_n:,} chunks, reading stopped {full:.2f} s")

    def forget(self, slot: int) -> None:
        """Any thread: no more updates or audio for the slot's stream."""
        self._streams.pop(slot, None)
        self._accepts[slot] = False

    def _drop_backlog(self, slot: int) -> None:
        """The reader thread's: the slot's waiting chunks are discarded (the stream was cancelled or failed)."""
        dropped = self._backlog.pop(slot, None)
        if dropped:
            self._backlog_n -= len(dropped)

    def join(self) -> None:
        """Stop the writer (after what it has queued) and drop the pipe's duplicate (the reader is done)."""
        self._out.put(None)
        self._writer.join(timeout=5)
        self.sock.close()

    def _write(self) -> None:
        while (msg := self._out.get()) is not None:
            try:
                self.conn.send(msg)
            except (OSError, EOFError, BrokenPipeError):
                return

    def reading(self) -> bool:
        """Whether its pipe is read: not while a full backlog holds the front end back (the pipe fills, its
        ``apush`` waits, as in one process)."""
        return not self.closed and self._backlog_n < BACKLOG_CHUNKS

    def service(self) -> bool:
        """The reader thread's: retry the backlog if the worker stepped since the last try; whether one is left."""
        if self._backlog and self.engine.bulk.steps_done != self._tried_at:
            self._drain()
        return bool(self._backlog)

    def read(self) -> None:
        """The reader thread's (the pipe is readable): handle the messages whole by now; at the pipe's end, cancel
        its streams."""
        try:
            messages = self._messages.messages()
        except Exception as exc:  # noqa: BLE001 - the pipe ended, or its bytes make no message: this link only
            if not isinstance(exc, (EOFError, OSError)):
                log.error("front end %d: unreadable pipe (%s): its streams are cancelled", self.index, exc)
            self.closed = True
            self.sock.close()
            for slot in list(self._streams):  # the front end is gone: free its streams' slots
                self._cancel(slot)
            return
        for msg in messages:
            try:
                self._handle(msg)
            except Exception:  # noqa: BLE001 - one bad message must not drop every stream of the front end
                log.exception("front end %d: message %s failed", self.index, type(msg).__name__)

    def _handle(self, msg: object) -> None:
        match msg:
            case Audio(slots, chunks):
                self._audio(slots, chunks)
            case Open(key, options, route):
                self._open(key, options, route)
            case End(slot, tail):
                self._end(slot, tail)
            case Cancel(slot):
                self._cancel(slot)
            case Ready():
                self.ready.set()
            case ServerCounters(snapshot):
                self.engine.frontend_counters[self.index] = snapshot
            case MetricsRequest(key):
                self._out.put(MetricsReply(key, self.engine.metrics_snapshot()))
            case _:
                raise ValueError(f"not a front end's message: {type(msg).__name__}")

    def _open(self, key: int, options: dict, route: str | None) -> None:
        try:
            opts = self.engine._check(options, route)
        except (ValueError, KeyError) as exc:
            self._out.put(Refused(key, "bad_request", str(exc)))
            return

        def opened(future) -> None:  # on the worker thread
            if future.exception() is not None:
                self._out.put(Refused(key, "capacity", str(future.exception())))
                return
            slot = future.result()
            st = _RemoteStream(self, slot)
            self._streams[slot] = st
            self._accepts[slot] = True
            self.engine.register(slot, st, opts)
            self._out.put(Opened(key, slot))

        self.engine.request_open().add_done_callback(opened)

    def _audio(self, slots: np.ndarray, chunks: np.ndarray) -> None:
        """Chunks (n, chunk) for ``slots`` (n,), a slot's in order: pushed by ``push_many`` round after round (a
        slot's first chunk of the message, then its second, ...) while its queue has room and it has no backlog;
        the rest to the backlog."""
        keep = self._accepts[slots]
        finite = np.isfinite(chunks).all(axis=1)  # the front ends refuse such audio; a bad one must not stop this reader
        for slot in np.unique(slots[keep & ~finite]).tolist():
            self._refuse(slot, "non_finite_audio", "audio holds NaN or infinite samples")
        keep &= finite & self._accepts[slots]
        slots, chunks = slots[keep], chunks[keep]
        self._msgs += 1
        self._chunks += len(slots)
        if not len(slots):
            return
        # round r pushes each slot's r-th chunk of the message (push_many takes distinct slots), unless that slot is
        # stuck: it has a backlog, or an earlier round was refused (its queue is full); the rest go to the backlog
        order = np.argsort(slots, kind="stable")
        ordered = slots[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        rank = np.empty(len(slots), np.int64)
        rank[order] = np.arange(len(slots)) - np.repeat(starts, np.diff(np.r_[starts, len(slots)]))
        stuck = {s for s in np.unique(slots).tolist() if s in self._backlog} if self._backlog else set()
        pushed = np.zeros(len(slots), bool)
        for r in range(int(rank.max()) + 1):
            pick = np.flatnonzero(rank == r)
            if stuck:
                pick = pick[[s not in stuck for s in slots[pick].tolist()]]
            if not len(pick):
                break
            refused = self.engine.bulk.push_many(slots[pick], chunks[pick])
            pushed[pick[~refused]] = True
            stuck.update(slots[pick[refused]].tolist())
        for i in np.flatnonzero(~pushed).tolist():  # in message order: a slot's chunks stay in order
            self._backlog.setdefault(int(slots[i]), collections.deque()).append(chunks[i])
            self._backlog_n += 1

    def _refuse(self, slot: int, code: str, message: str) -> None:
        """The stream's error: no more of its audio is taken; its slot stays open until the front end's cancel
        (which the error brings) frees it: freeing it here, a later stale cancel could hit the slot's next stream."""
        self._accepts[slot] = False
        self._drop_backlog(slot)
        self.send(StreamError(slot, code, message))

    def _drain(self) -> None:
        """Push the backlog's oldest item of each slot, round after round, while any is taken."""
        self._tried_at = self.engine.bulk.steps_done
        while self._backlog:
            ends = [s for s, q in self._backlog.items() if isinstance(q[0], _End)]
            for s in ends:
                self._push_end(s)
            heads = np.fromiter((s for s, q in self._backlog.items() if not isinstance(q[0], _End)), np.int64)
            # only those with room: stacking the heads of every waiting stream to have most refused costs the
            # engine process's GIL, which the stepping thread needs (measured: steps 10x slower under a backlog)
            heads = heads[self.engine.bulk.queues.room(heads) > 0] if len(heads) else heads
            if not len(heads):
                return
            refused = self.engine.bulk.push_many(heads, np.stack([self._backlog[s][0] for s in heads.tolist()]))
            for s in heads[~refused].tolist():
                self._pop(s)
            if refused.all():
                return

    def _pop(self, slot: int) -> None:
        q = self._backlog[slot]
        q.popleft()
        self._backlog_n -= 1
        if not q:
            del self._backlog[slot]

    def _end(self, slot: int, tail: np.ndarray) -> None:
        st = self._streams.get(slot)
        if st is None or st.ending:
            return
        st.ending = True
        self._accepts[slot] = False
        self._backlog.setdefault(slot, collections.deque()).append(_End(tail))
        self._backlog_n += 1
        if len(self._backlog[slot]) == 1:
            self._push_end(slot)

    def _push_end(self, slot: int) -> None:
        """The stream's last partial chunk, then its end (the worker steps it); stays in the backlog if full."""
        try:
            self.engine.bulk.push(slot, self._backlog[slot][0].tail)
        except CapacityError:
            return
        self._pop(slot)
        self.engine._end(self._streams[slot])

    def _cancel(self, slot: int) -> None:
        st = self._streams.get(slot)
        if st is None:
            return
        with self.engine._lock:
            self.forget(slot)
        self._drop_backlog(slot)
        self.engine._forget(st)
        if not st.ending:
            self.engine.request_cancel(slot)


class LinkReader:
    """One thread reading every front end's pipe (``multiprocessing.connection.wait``; each gives what has arrived,
    ``pipe.py``) and retrying their backlogs after each step. A thread per link made ten GIL-hungry readers
    (each message read in 64 KB pieces, a GIL release and retake each; with a backlog, a wake-up every 2 ms per
    link): the stepping thread got the GIL 4 % of the time at 8,192 streams (py-spy, H200 host) and its
    steps took 10x their time."""

    def __init__(self, links: list[FrontendLink]):
        self.links = links
        self._thread = threading.Thread(target=self._run, name="legato-frontends-in", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        by_conn = {link.conn: link for link in self.links}
        while any(not link.closed for link in self.links):
            behind = [self._service(link) for link in self.links if not link.closed]
            readable = [link for link in self.links if link.reading()]
            held = [link for link in self.links if not link.closed and not link.reading()]
            started = time.monotonic()
            timeout = BACKLOG_RETRY_S if any(behind) else IDLE_WAIT_S
            if readable:
                ready = multiprocessing.connection.wait([link.conn for link in readable], timeout)
            else:
                time.sleep(timeout)
                ready = []
            for link in held:
                link._full_s += time.monotonic() - started
            for conn in ready:
                by_conn[conn].read()

    @staticmethod
    def _service(link: FrontendLink) -> bool:
        try:
            return link.service()
        except Exception:  # noqa: BLE001 - one link's backlog must not stop the reader of every link
            log.exception("front end %d: backlog retry failed", link.index)
            return False

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


@dataclass
class Frontends:
    procs: list  # the front-end processes
    links: list[FrontendLink]
    reader: LinkReader


def start_frontends(engine: BulkEngine, count: int, config) -> Frontends:
    """``count`` front-end processes serving ``config`` (a ``ServerConfig`` with a fixed port) over ``engine``;
    returns once each listens."""
    ctx = multiprocessing.get_context("spawn")  # not fork: this process holds CUDA and threads
    procs, links = [], []
    for i in range(count):
        parent, child = ctx.Pipe()  # duplex: a socket pair (``pipe.py`` reads it as one)
        settings = asdict(config) | {"reuse_port": True, "bulk_chunk": engine.bulk.chunk, "stats_every_s": engine.stats_every_s}
        p = ctx.Process(target=frontend_main, args=(child, engine.routes[0], settings, i), name=f"legato-frontend-{i}")
        p.start()
        child.close()
        procs.append(p)
        links.append(FrontendLink(engine, parent, i))
    reader = LinkReader(links)
    for link, p in zip(links, procs):
        if not link.ready.wait(READY_TIMEOUT_S):
            raise RuntimeError(f"front end {link.index} did not start (exit code {p.exitcode})")
    return Frontends(procs, links, reader)


def stop_frontends(frontends: Frontends) -> None:
    """SIGTERM each front end (it drains its streams: their ends still go through the engine) and wait for it."""
    for p in frontends.procs:
        p.terminate()
    for p in frontends.procs:
        p.join()
    frontends.reader.join(timeout=5)  # every pipe closed: it has cancelled what was left
    for link in frontends.links:
        link.join()
