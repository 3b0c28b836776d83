"""The one loop of stages whose streams each have a queue of model steps: group the streams whose next steps can
share a batch, run each group as one call, and when a batched call fails, retry its streams one by one, so that
only the stream at fault fails and the others go on."""

from __future__ import annotations

from typing import Callable, Hashable, TypeVar

Job = TypeVar("Job")


def run_grouped(pending: dict[int, list[Job]], key: Callable[[int, Job], Hashable],
                run: Callable[[list[int], list[Job]], None], failed: Callable[[int, Exception], None]) -> None:
    """Until every row's ``pending`` jobs are done: rows grouped by ``key(row, next job)``, ``run(rows, jobs)`` once
    per group (it commits the rows' state only when it succeeds). A group's failure is retried row by row; a row
    that fails alone gets ``failed(row, exc)`` and its remaining jobs are dropped. A lone row's failure is raised
    (the caller's caller decides)."""
    while True:
        groups: dict[Hashable, list[int]] = {}
        for row, jobs in pending.items():
            if jobs:
                groups.setdefault(key(row, jobs[0]), []).append(row)
        if not groups:
            return
        for rows in groups.values():
            jobs = [pending[row][0] for row in rows]
            try:
                run(rows, jobs)
                done = rows
            except Exception:
                if len(rows) == 1:
                    raise
                done = []
                for row, job in zip(rows, jobs):
                    try:
                        run([row], [job])
                        done.append(row)
                    except Exception as exc:  # noqa: BLE001 - this stream fails alone
                        failed(row, exc)
                        pending[row] = []
            for row in done:
                pending[row].pop(0)
