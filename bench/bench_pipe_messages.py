"""A front end's audio to the engine process: a pickled message vs raw frames (``server/frontends/pipe.py``).

A sender process writes N audio messages (512 chunks of 2,560 float32 samples: 5.2 MB, what a busy front end sends)
over a ``multiprocessing`` pipe, pickled (``Connection.send``) or as raw frames (``send_audio``); this process reads
them with ``MessageReader`` as the engine's link reader does and reports its CPU time (the engine process's GIL is
the scarce resource) and wall time per message, side by side in one run.

    python3 -P bench/bench_pipe_messages.py [--messages 60] [--rows 512]
"""

from __future__ import annotations

import argparse
import multiprocessing
import select
import socket
import time

import numpy as np

from legato.server.frontends.messages import Audio
from legato.server.frontends.pipe import MessageReader, send_audio

CHUNK = 2560  # samples of a 160 ms model chunk at 16 kHz


def _send(conn, raw: bool, messages: int, rows: int) -> None:
    slots, chunks = np.arange(rows), np.ones((rows, CHUNK), np.float32)
    for _ in range(messages):
        if raw:
            send_audio(conn, slots, chunks)
        else:
            conn.send(Audio(slots, chunks))  # pickled whole
    conn.close()


def run(raw: bool, messages: int, rows: int) -> tuple[float, float]:
    """(reader CPU ms, wall ms) per message."""
    ours, theirs = multiprocessing.Pipe()
    sender = multiprocessing.get_context("spawn").Process(target=_send, args=(theirs, raw, messages, rows))
    sender.start()
    theirs.close()
    reader = MessageReader(socket.fromfd(ours.fileno(), socket.AF_UNIX, socket.SOCK_STREAM))
    got, cpu, wall = 0, time.thread_time(), time.perf_counter()
    while True:
        select.select([ours.fileno()], [], [], 1.0)
        try:
            got += len(reader.messages())
        except EOFError:
            break
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    sender.join()
    assert got == messages, got
    return cpu / got * 1e3, wall / got * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=60)
    ap.add_argument("--rows", type=int, default=512)
    args = ap.parse_args()
    print(f"{args.messages} messages of {args.rows * CHUNK * 4 / 1e6:.1f} MB each")
    print("| format | reader CPU ms a message | wall ms a message |")
    print("|---|---:|---:|")
    results = {raw: run(raw, args.messages, args.rows) for raw in (False, True)}
    for raw, (cpu, wall) in results.items():
        print(f"| {'raw frames (send_audio)' if raw else 'pickled (Connection.send)'} | {cpu:.2f} | {wall:.2f} |")
    print(f"reader CPU ratio pickled / raw: {results[False][0] / results[True][0]:.1f}x")


if __name__ == "__main__":
    main()
