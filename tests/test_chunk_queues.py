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
