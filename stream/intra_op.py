"""CPU intra-op threads: model work parallel on the engine's workers, the main thread serial.

PyTorch's CPU kernels parallelise with OpenMP (libgomp), and libgomp gives every thread that starts a
parallel region a team of its own. A server loads its models on the main thread (a team is made there)
and runs them on an engine worker (a second team): more OpenMP threads than cores, so libgomp stops
spinning at its barriers and every one of a step's thousands of small parallel regions sleeps and wakes
in the kernel. Measured on the 2-core dev machine, Piper VITS on one sentence: 93-126 ms on the main
thread, 132-169 ms on a worker thread, 100 ms on the worker once the main thread had run serially.

So a process that serves (``legato serve``, ``legato say`` in-process) calls :func:`serial_main_thread`
before it loads anything, and each engine worker calls :func:`parallel_worker` when it starts.
"""

from __future__ import annotations

import os

import torch


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def serial_main_thread() -> None:
    """Run this (the main) thread's torch work on one thread: no OpenMP team of its own."""
    torch.set_num_threads(1)


def parallel_worker(threads: int | None = None) -> None:
    """Run this (a worker) thread's torch work on ``threads`` threads (default: every core)."""
    torch.set_num_threads(threads or cores())
