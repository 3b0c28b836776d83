"""``TokenUpdates``: a bulk step's token news as flat arrays, split back into per-stream rows on the consumer's side."""

import numpy as np

from legato.asr.fastconformer.bulk_tokens import TokenUpdates


def _rows(u: TokenUpdates) -> list:
    return list(u.rows())


def test_from_mask_keeps_each_rows_tokens_in_frame_order():
    keep = np.array([[False, True, True], [False, False, False], [True, False, True]])
    best = np.array([[9, 4, 5], [1, 1, 1], [7, 8, 6]])
    u = TokenUpdates.from_mask(np.array([10, 11, 12]), keep, best, np.array([100, 0, 30]))
    assert _rows(u) == [(10, [4, 5], [101, 102], False, False), (12, [7, 6], [30, 32], False, False)]
    assert u.last_frames().tolist() == [102, 32]


def test_from_lists_drops_empty_rows_unless_asked():
    u = TokenUpdates.from_lists([3, 4, 5], [[1], [], [2, 3]], [[7], [], [8, 9]])
    assert _rows(u) == [(3, [1], [7], False, False), (5, [2, 3], [8, 9], False, False)]
    e = TokenUpdates.from_lists([3, 4], [[1], []], [[7], []], final=True, end=True, keep_empty=True)
    assert _rows(e) == [(3, [1], [7], True, True), (4, [], [], True, True)]
    assert e.last_frames().tolist() == [7, -1]


def test_select_with_finals_and_concat():
    a = TokenUpdates.from_lists([1, 2, 3], [[5], [6, 7], [8]], [[0], [1, 2], [3]])
    assert _rows(a.select(np.array([True, False, True]))) == [(1, [5], [0], False, False), (3, [8], [3], False, False)]
    f = a.with_finals(np.array([2, 9]))  # 2 has a row: final; 9 has none: an empty final row
    assert _rows(f) == [(1, [5], [0], False, False), (2, [6, 7], [1, 2], True, False), (3, [8], [3], False, False),
                        (9, [], [], True, False)]
    assert a.with_finals(np.zeros(0, np.int64)) is a
    c = TokenUpdates.concat([a.select(np.array([True, False, False])), TokenUpdates.empty(), f.select(np.array([False, False, False, True]))])
    assert _rows(c) == [(1, [5], [0], False, False), (9, [], [], True, False)]
    assert len(TokenUpdates.concat([])) == 0
