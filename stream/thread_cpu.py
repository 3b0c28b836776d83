"""CPU each thread of this process used since the last read (Linux ``/proc/self/task``), grouped by thread name.

A server's steps can be slow for want of the CPU (other threads, other processes) or while waiting (the GIL, the
GPU): a thread's CPU share beside its busy share tells which, and which threads took the CPU, without a profiler.
Threads Python did not start (PyTorch's, CUDA's) are counted as "other"; names differing only in digits share a
group (``legato-frontend-*-in``). Elsewhere than Linux the line is empty.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

TASKS = Path("/proc/self/task")
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
UTIME_FIELD = 13  # /proc/<pid>/task/<tid>/stat fields after the command name: utime, stime (clock ticks)


def _ticks(tid: int) -> int | None:
    try:
        text = (TASKS / str(tid) / "stat").read_text()
    except OSError:  # the thread ended
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return int(fields[UTIME_FIELD - 2]) + int(fields[UTIME_FIELD - 1])


class ThreadCpu:
    """``read()`` -> {group: share of one core} since the last read; ``line()`` the same as a log fragment."""

    def __init__(self) -> None:
        self.available = TASKS.is_dir()
        self._last: dict[int, int] = {}
        self._at = time.monotonic()
        if self.available:
            self.read()

    def read(self) -> dict[str, float]:
        if not self.available:
            return {}
        now = time.monotonic()
        span, self._at = max(now - self._at, 1e-9), now
        names = {t.native_id: re.sub(r"\d+", "*", t.name) for t in threading.enumerate()}
        shares: dict[str, float] = {}
        current: dict[int, int] = {}
        for entry in TASKS.iterdir():
            tid = int(entry.name)
            ticks = _ticks(tid)
            if ticks is None:
                continue
            current[tid] = ticks
            used = (ticks - self._last.get(tid, ticks)) * TICK_S / span
            group = names.get(tid, "other")
            shares[group] = shares.get(group, 0.0) + used
        self._last = current
        return shares

    def line(self) -> str:
        """'cpu (% of a core) worker 45, ...; load 3.1 of 16 cores' (busiest first), or '' where unavailable."""
        shares = self.read()
        if not shares:
            return ""
        parts = ", ".join(f"{name} {share:.0%}" for name, share in sorted(shares.items(), key=lambda kv: -kv[1]) if share >= 0.005)
        return f"cpu (of a core) {parts or 'none'}; process {sum(shares.values()):.0%}; load {os.getloadavg()[0]:.1f} of {os.cpu_count()} cores"
