"""Continuous batching of iterative jobs: rows at different steps share a round; cancel drops; errors reach the job."""

import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest

from legato.stream.errors import CapacityError
from legato.tts.batching import StepBatcher


def counting_step(batch):
    """state = [steps left, steps taken]; a tiny sleep makes rounds long enough for jobs to overlap."""
    time.sleep(0.002)
    for job in batch:
        job.state[0] -= 1
        job.state[1] += 1
        if job.state[0] == 0:
            job.done, job.result = True, job.state[1]


def test_jobs_joining_at_any_step_are_batched_together():
    b = StepBatcher(counting_step, max_batch=8)
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(b.run, [10 + i, 0]) for i in range(8)]
            results = [f.result(10) for f in futures]
        assert results == [10 + i for i in range(8)]
        assert b.max_seen_batch > 1
        assert b.rounds < sum(results)  # shared rounds, not one per job step
    finally:
        b.close()


def test_cancelled_job_is_dropped_and_others_finish():
    b = StepBatcher(counting_step, max_batch=4)
    try:
        stop = threading.Event()
        slow = b.submit([10_000, 0], stop)
        fast = b.submit([5, 0])
        assert fast.future.result(10) == 5
        stop.set()
        with pytest.raises(CancelledError):
            slow.future.result(10)
    finally:
        b.close()


def test_step_error_reaches_the_jobs_of_that_round_only():
    def step(batch):
        for job in batch:
            if job.state == "bad":
                raise ValueError("boom")
            job.done, job.result = True, job.state

    b = StepBatcher(step, max_batch=1)
    try:
        bad, good = b.submit("bad"), b.submit("good")
        with pytest.raises(ValueError, match="boom"):
            bad.future.result(10)
        assert good.future.result(10) == "good"
    finally:
        b.close()


def test_waiting_queue_is_bounded():
    gate = threading.Event()

    def step(batch):
        gate.wait(10)
        for job in batch:
            job.done = True

    b = StepBatcher(step, max_batch=1, max_waiting=2)
    try:
        b.submit(1), b.submit(2)
        with pytest.raises(CapacityError):
            b.submit(3)
    finally:
        gate.set()
        b.close()
