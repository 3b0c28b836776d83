"""stream/grouped_steps.py: steps batched by key, a failing batch retried row by row, the faulty row alone fails."""

import pytest

from legato.stream.grouped_steps import run_grouped


def test_groups_by_key_until_done_and_isolates_the_faulty_row():
    calls, failures = [], {}
    pending = {0: ["a1", "a2"], 1: ["a1", "bad"], 2: ["b1"], 3: []}

    def run(rows, jobs):
        calls.append((tuple(rows), tuple(jobs)))
        if "bad" in jobs:
            raise RuntimeError("boom")

    run_grouped(pending, lambda row, job: job != "b1", run, failures.__setitem__)
    assert calls[:2] == [((0, 1), ("a1", "a1")), ((2,), ("b1",))]  # one call per key
    assert ((0, 1), ("a2", "bad")) in calls and ((0,), ("a2",)) in calls and ((1,), ("bad",)) in calls  # retried alone
    assert list(failures) == [1] and pending == {0: [], 1: [], 2: [], 3: []}


def test_a_lone_rows_failure_is_raised():
    def run(rows, jobs):
        raise ValueError("only me")

    with pytest.raises(ValueError, match="only me"):
        run_grouped({5: ["x"]}, lambda row, job: job, run, lambda row, exc: None)
