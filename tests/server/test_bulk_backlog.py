"""The engine's end of a front end's pipe (``FrontendLink``): a stream far behind (many chunks in one message, its
queue full) waits in the link's backlog, in order, while other streams' audio goes straight on; its end waits
behind its chunks; a cancel drops what it had waiting. The step windows behind the server's stats line."""

import multiprocessing
import threading
import time

import numpy as np

from legato.server.frontends.links import BACKLOG_CHUNKS, FrontendLink, _RemoteStream
from legato.server.frontends.messages import Audio, Ready, Setup, StreamError
from legato.server.frontends.pipe import AudioHeader
from legato.stream.chunk_queues import ChunkQueues
from legato.stream.metrics import Histogram
from legato.stream.step_window import StepWindows

CHUNK = 4
DEPTH = 2


class _Bulk:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.queues = ChunkQueues(capacity, CHUNK, depth=DEPTH, max_take=capacity, pinned=False)
        self.steps_done = 0

    def push_many(self, slots, chunks):
        return self.queues.push_many(slots, chunks)

    def push(self, slot, samples):
        self.queues.push(slot, samples)


class _Engine:
    """What a link uses of ``BulkEngine``."""

    def __init__(self, capacity: int = 8):
        self.bulk = _Bulk(capacity)
        self.recognizer = type("R", (), {"tokenizer": type("T", (), {"model_proto": b""})(), "frame_s": 0.08})()
        self.stats_lines, self.ended, self.cancelled, self.forgotten = [], [], [], []
        self._lock = threading.Lock()

    def _end(self, st):
        self.ended.append(st.slot)

    def _forget(self, st):
        self.forgotten.append(st.slot)

    def request_cancel(self, slot):
        self.cancelled.append(slot)


def _link(slots=(0, 1, 2)):
    engine = _Engine()
    parent, child = multiprocessing.Pipe()
    link = FrontendLink(engine, parent, 0)
    for s in slots:
        link._streams[s] = _RemoteStream(link, s)
        link._accepts[s] = True
    return engine, link, child


def _chunks(slot: int, first: int, n: int) -> np.ndarray:
    """Chunk k of a slot: every sample ``100 * slot + k`` (order checks)."""
    return np.stack([np.full(CHUNK, 100 * slot + k, np.float32) for k in range(first, first + n)])


def _take_all(engine) -> dict[int, list[int]]:
    got: dict[int, list[int]] = {}
    engine.bulk.steps_done += 1
    while True:
        rows, audio, _ = engine.bulk.queues.take(64)
        if not len(rows):
            return got
        for r, a in zip(rows.tolist(), audio.numpy()):
            got.setdefault(r, []).append(int(a[0]) - 100 * r)


def test_a_stream_far_behind_does_not_hold_the_others():
    engine, link, conn = _link()
    link._audio(np.zeros(6, np.int64), _chunks(0, 0, 6))  # stream 0: six chunks at once, its queue holds two
    assert link._backlog_n == 4
    link._audio(np.array([1, 2, 1]), np.concatenate([_chunks(1, 0, 1), _chunks(2, 0, 1), _chunks(1, 1, 1)]))
    assert link._backlog_n == 4  # streams 1 and 2 went straight into their queues
    got = _take_all(engine)
    assert got == {0: [0, 1], 1: [0, 1], 2: [0]}
    order = [0, 1]
    while link._backlog:
        link._drain()
        order += _take_all(engine).get(0, [])
    assert order == list(range(6)) and link._backlog_n == 0
    conn.close()


def test_new_chunks_of_a_stream_with_a_backlog_queue_behind_it():
    engine, link, conn = _link()
    link._audio(np.zeros(3, np.int64), _chunks(0, 0, 3))
    link._audio(np.zeros(1, np.int64), _chunks(0, 3, 1))  # its queue has room again only after a take
    assert link._backlog_n == 2
    seen = []
    for _ in range(4):
        seen += _take_all(engine).get(0, [])
        link._drain()
    assert seen == [0, 1, 2, 3]
    conn.close()


def test_an_end_waits_behind_its_chunks_and_a_cancel_drops_the_backlog():
    engine, link, conn = _link()
    link._audio(np.zeros(4, np.int64), _chunks(0, 0, 4))
    link._end(0, np.full(2, 9, np.float32))
    assert engine.ended == [] and link._backlog_n == 3
    link._audio(np.zeros(1, np.int64), _chunks(0, 4, 1))  # audio after the end is dropped
    assert link._backlog_n == 3
    while engine.ended == []:
        _take_all(engine)
        link._drain()
    assert engine.ended == [0] and not link._backlog
    link._audio(np.full(5, 1, np.int64), _chunks(1, 0, 5))
    link._cancel(1)
    assert link._backlog_n == 0 and engine.cancelled == [1] and engine.forgotten == [1]
    link._audio(np.full(1, 1, np.int64), _chunks(1, 5, 1))  # the cancelled stream's late audio is dropped
    assert link._backlog_n == 0 and engine.bulk.queues.queued(1) == DEPTH
    conn.close()


def test_stats_line_counts_and_backlog_bound_is_sane():
    _, link, conn = _link()
    link._audio(np.array([0, 1]), np.concatenate([_chunks(0, 0, 1), _chunks(1, 0, 1)]))
    line = link.stats_line()
    assert "2 chunks in 1 messages" in line and "backlog 0 chunks" in line
    assert "0 chunks in 0 messages" in link.stats_line()
    assert BACKLOG_CHUNKS * CHUNK > 0
    conn.close()


def test_histogram_records_arrays_like_lists():
    a, b = Histogram.latency(), Histogram.latency()
    v = np.random.default_rng(0).lognormal(-4, 2, 5000)
    v[:3] = a.edges[:3]  # on bucket edges: bisect_left's side
    a.record_many(v.tolist())
    b.record_many(v)
    assert a.counts == b.counts and a.count == b.count and (a.min, a.max) == (b.min, b.max)
    assert np.isclose(a.total, b.total)


def test_step_windows_read_and_restart():
    w = StepWindows()
    w.record(100, 0.010, np.full(100, 0.05))
    w.record(300, 0.030, np.full(300, 0.07))
    first = w.read()
    assert (first.steps, first.chunks, first.largest_batch) == (2, 400, 300)
    line = first.line(first.started + 1.0)
    assert "400 chunks/s" in line and "batch mean 200, max 300" in line and "worker busy 4%" in line
    assert w.read().line().startswith("idle")


def test_non_finite_audio_fails_only_its_stream_and_keeps_its_slot_until_the_cancel():
    engine, link, conn = _link()
    bad = _chunks(0, 0, 2)
    bad[1, 2] = np.nan
    link._audio(np.array([0, 0, 1]), np.concatenate([bad, _chunks(1, 0, 1)]))
    assert conn.recv() == Setup(b"", 0.08) and conn.recv() == StreamError(0, "non_finite_audio", "audio holds NaN or infinite samples")
    assert _take_all(engine) == {1: [0]}  # the other stream's chunk went in; none of the failed stream's
    link._audio(np.zeros(1, np.int64), _chunks(0, 2, 1))  # the failed stream's later audio is dropped
    assert engine.bulk.queues.queued(0) == 0 and 0 in link._streams
    link._cancel(0)  # the front end's cancel (its handle saw the error) frees the slot
    assert engine.cancelled == [0] and 0 not in link._streams
    conn.close()


def test_message_reader_gives_whole_messages_as_they_arrive_and_eof_after_them():
    """multiprocessing's wire format (small, 5 MB, array messages) and raw-frame audio (``send_audio``, empty too),
    read without waiting: a message whose bytes are still on their way is not returned yet; the end comes after
    every whole message."""
    import socket

    import pytest

    from legato.server.frontends.messages import Audio, Cancel, End, Ready
    from legato.server.frontends.pipe import MessageReader, send_audio

    parent, child = multiprocessing.Pipe()
    reader = MessageReader(socket.fromfd(parent.fileno(), socket.AF_UNIX, socket.SOCK_STREAM))
    assert reader.messages() == []  # nothing yet: no wait
    big = np.arange(1_300_000, dtype=np.float32)  # 5.2 MB: the sender waits for the reader, piece by piece
    raw = np.arange(3 * 700_000, dtype=np.float32).reshape(3, 700_000)  # 8.4 MB as raw frames (send_audio)

    def send():
        child.send(Ready())
        child.send(Audio(np.array([3]), big))  # pickled whole: it still arrives
        send_audio(child, np.array([5, 6, 5]), raw)
        send_audio(child, np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
        child.send(Cancel(3))

    sender = threading.Thread(target=send)
    sender.start()
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        got += reader.messages()
    sender.join()
    assert got[0] == Ready() and got[4] == Cancel(3)
    assert isinstance(got[1], Audio) and got[1].slots.tolist() == [3] and np.array_equal(got[1].chunks, big)
    assert isinstance(got[2], Audio) and got[2].slots.tolist() == [5, 6, 5] and np.array_equal(got[2].chunks, raw)
    assert isinstance(got[3], Audio) and got[3].slots.shape == (0,) and got[3].chunks.shape == (0, 4)
    child.send(Cancel(4))
    child.close()
    time.sleep(0.05)
    assert reader.messages() == [Cancel(4)]  # the last message before the close, then the end
    with pytest.raises(EOFError):
        reader.messages()
    reader.sock.close()
    parent.close()


def _two_links_read():
    """Two front ends' links, stream 0 on the first and 1 on the second, served by one ``LinkReader``: (engine,
    [(engine end, front-end end)], links, reader)."""
    from legato.server.frontends.links import LinkReader

    engine = _Engine()
    pairs = [multiprocessing.Pipe() for _ in range(2)]
    links = [FrontendLink(engine, parent, i) for i, (parent, _) in enumerate(pairs)]
    for link, s in zip(links, (0, 1)):
        link._streams[s] = _RemoteStream(link, s)
        link._accepts[s] = True
    return engine, pairs, links, LinkReader(links)


def test_one_reader_serves_every_link_and_a_closed_pipe_cancels_its_streams():
    engine, pairs, links, reader = _two_links_read()
    pairs[0][1].send(Audio(np.array([0]), _chunks(0, 0, 1)))
    pairs[1][1].send(Audio(np.array([1]), _chunks(1, 0, 1)))
    pairs[1][1].send(Ready())
    assert links[1].ready.wait(5)
    deadline = time.monotonic() + 5
    while engine.bulk.queues.waiting() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _take_all(engine) == {0: [0], 1: [0]}
    for _, child in pairs:
        child.close()
    reader.join(timeout=5)
    assert sorted(engine.cancelled) == [0, 1] and all(link.closed for link in links)


def test_a_client_held_for_a_full_pipe_queue_resumes_once_the_writer_makes_room(monkeypatch):
    """A front end's ``apush`` past ``MAX_AUDIO_IN_FLIGHT`` queued chunks waits (no polling) until the writer thread
    has sent some; then it goes on."""
    import asyncio

    import torch

    from legato.server.frontends import process as bulk_frontend
    from legato.stream.frames import AudioChunk

    monkeypatch.setattr(bulk_frontend, "MAX_AUDIO_IN_FLIGHT", 2)
    gate = threading.Event()
    real_send = bulk_frontend.send_audio
    monkeypatch.setattr(bulk_frontend, "send_audio", lambda conn, s, c: (gate.wait(5), real_send(conn, s, c)))
    ours, theirs = multiprocessing.Pipe()

    async def go():
        engine = bulk_frontend.RemoteEngine(theirs, "m", CHUNK).start()
        handle = bulk_frontend.RemoteHandle(engine, 0, 16000, False, CHUNK)
        chunk = AudioChunk(torch.zeros(CHUNK, 1), 16000)
        for _ in range(2):
            await handle.apush(chunk)
        third = asyncio.create_task(handle.apush(chunk))
        await asyncio.sleep(0.2)
        held = not third.done()
        gate.set()  # the writer sends: room again
        await asyncio.wait_for(third, 5)
        engine.stop()
        ours.close()  # the engine's end goes away: the front end's reader sees it
        await asyncio.wait_for(engine.closed.wait(), 5)
        return held

    assert asyncio.run(go())


def test_a_garbled_pipe_closes_only_its_link():
    """Bytes that make no message (an audio frame of the wrong size) close that link and cancel its streams; the
    reader thread goes on serving the other link."""
    engine, pairs, links, reader = _two_links_read()
    pairs[0][1].send(AudioHeader(1, CHUNK))
    pairs[0][1].send_bytes(b"12345")  # 5 bytes where 8 (one int64 slot) belong
    deadline = time.monotonic() + 5
    while not links[0].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert links[0].closed and engine.cancelled == [0]
    pairs[1][1].send(Audio(np.array([1]), _chunks(1, 0, 1)))
    while engine.bulk.queues.waiting() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _take_all(engine) == {1: [0]} and not links[1].closed
    for _, child in pairs:
        child.close()
    reader.join(timeout=5)
