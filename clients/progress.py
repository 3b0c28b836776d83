"""Progress bars for the CLI's long work, on a terminal only.

tqdm draws them on stderr when stderr is a TTY; piped or redirected output (scripts, CI, logs) gets none, so
stdout stays the transcript alone and logs get no carriage-return noise.
"""

from __future__ import annotations

import sys
from typing import Callable


def seconds_bar(total_s: float, desc: str) -> tuple[Callable[[float, float], None], Callable[[], None]]:
    """``(update(done_s, total_s), close())`` of a bar counting seconds of audio; no-ops unless stderr is a TTY."""
    if not sys.stderr.isatty():
        return (lambda done, total: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=round(total_s, 1), desc=desc, unit="s", unit_scale=False, file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]")

    def update(done_s: float, total: float) -> None:
        bar.n = round(min(done_s, total), 1)
        bar.refresh()

    return update, bar.close


def seconds_counter(desc: str) -> tuple[Callable[[float], None], Callable[[], None]]:
    """``(add(seconds), close())`` of a counter of audio seconds made so far, for work whose total is not known in
    advance (speech from text); no-ops unless stderr is a TTY."""
    if not sys.stderr.isatty():
        return (lambda seconds: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="s", file=sys.stderr, leave=False,
               bar_format="{desc}: {n:.1f} s audio [{elapsed}, {rate_fmt}]")

    def add(seconds: float) -> None:
        bar.update(seconds)

    return add, bar.close


def steps_bar(desc: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """``(update(done, total), close())`` of a bar counting steps of model loading or compiling; no-ops unless stderr
    is a TTY."""
    if not sys.stderr.isatty():
        return (lambda done, total: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(desc=desc, file=sys.stderr, leave=False, bar_format="{desc}: {n}/{total} [{elapsed}]")

    def update(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    return update, bar.close
