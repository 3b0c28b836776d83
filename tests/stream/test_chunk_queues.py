"""Bulk audio queues: chunks taken oldest first by their arrival stamps, bounded depth, refusals queue nothing."""

import numpy as np
import pytest

from legato.stream.chunk_queues import ChunkQueues
from legato.stream.errors import CapacityError, NonFiniteAudioError


def test_push_many_with_arrival_stamps_is_taken_oldest_first_and_bounded():
    q = ChunkQueues(4, 3, depth=2, max_take=8, pinned=False)
    chunks = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert not q.push_many(np.array([0, 1, 2, 3]), chunks, arrived=np.array([5.0, 2.0, 9.0, 1.0])).any()
    refused = q.push_many(np.array([3, 1]), chunks[:2] + 100, arrived=np.array([7.0, 8.0]))
    assert not refused.any()
    refused = q.push_many(np.array([1, 0]), chunks[:2], arrived=np.array([0.5, 6.0]))  # slot 1 is full (depth 2)
    assert refused.tolist() == [True, False]
    rows, audio, ready = q.take(8)
    assert rows.tolist() == [3, 1, 0, 2] and ready.tolist() == [1.0, 2.0, 5.0, 9.0]
    np.testing.assert_array_equal(audio.numpy(), chunks[[3, 1, 0, 2]])
    rows, audio, ready = q.take(8)
    assert rows.tolist() == [0, 3, 1] and ready.tolist() == [6.0, 7.0, 8.0]
    np.testing.assert_array_equal(audio.numpy()[1:], chunks[:2] + 100)


def test_bad_pushes_are_refused_whole():
    q = ChunkQueues(2, 4, depth=1, max_take=2, pinned=False)
    with pytest.raises(NonFiniteAudioError):
        q.push(0, np.array([0.0, np.nan], np.float32))
    q.push(0, np.ones(4, np.float32))
    with pytest.raises(CapacityError):
        q.push(0, np.ones(1, np.float32))
    with pytest.raises(ValueError):
        q.push_many(np.array([1]), np.ones((1, 3), np.float32))
    rows, audio, _ = q.take(2)
    assert rows.tolist() == [0] and audio.shape == (1, 4)


def test_a_producer_pushing_while_the_consumer_takes_loses_and_reorders_nothing():
    """take copies outside the lock; a producer thread pushing meanwhile (queues often full, pushes refused and
    retried) never overwrites a chunk being taken: each slot gets its chunks once, in order."""
    import threading

    slots, per_slot, chunk = 6, 100, 8
    q = ChunkQueues(slots, chunk, depth=2, max_take=slots, pinned=False)
    done = threading.Event()

    def produce():
        sent = np.zeros(slots, np.int64)
        while (sent < per_slot).any():
            todo = np.flatnonzero(sent < per_slot)
            chunks = (sent[todo, None] * slots + todo[:, None]).astype(np.float32) * np.ones((1, chunk), np.float32)
            refused = q.push_many(todo, chunks)
            sent[todo[~refused]] += 1
        done.set()

    got = [[] for _ in range(slots)]
    thread = threading.Thread(target=produce)
    thread.start()
    while not (done.is_set() and q.waiting() == 0):
        for buffer in (0, 1):
            rows, audio, _ = q.take(slots, buffer)
            for r, a in zip(rows.tolist(), audio.numpy()):
                assert (a == a[0]).all()
                got[r].append(int(a[0]))
    thread.join()
    assert got == [[k * slots + s for k in range(per_slot)] for s in range(slots)]
