"""Per-thread CPU shares: a busy thread shows about one core under its name group, an idle one about none."""

import sys
import threading
import time

import pytest

from legato.stream.thread_cpu import ThreadCpu

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")


def test_a_spinning_thread_shows_its_cpu_and_a_sleeping_one_none():
    cpu = ThreadCpu()
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    threads = [threading.Thread(target=spin, name="spinner-7"), threading.Thread(target=stop.wait, name="sleeper")]
    for t in threads:
        t.start()
    cpu.read()
    time.sleep(0.6)
    shares = cpu.read()
    stop.set()
    for t in threads:
        t.join()
    assert shares["spinner-*"] > 0.3  # digits collapse into one group; CI's two cores may be shared
    assert shares.get("sleeper", 0.0) < 0.1
    assert cpu.line().startswith("cpu (of a core) ") and " cores" in cpu.line()
