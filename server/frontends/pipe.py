"""Messages of a ``multiprocessing`` pipe read as far as they have arrived, never waiting for the rest; audio as raw
frames received straight into arrays.

The engine process reads every front end's pipe on one thread. ``Connection.recv`` blocks until its message is
whole, and a 5 MB audio message crosses a socket buffer of a few hundred KB in pieces, each written when the
sending front end's writer thread gets its own GIL back from a busy event loop: one slow sender held every other
front end's audio behind it. Here each readable pipe gives what it has (``MSG_DONTWAIT``) and a message is decoded
once whole. Wire format as ``Connection.send``: a 4-byte big-endian size (-1, then an 8-byte size, past 2 GB), then
the body, a pickle. Duplex ``multiprocessing`` pipes on POSIX are socket pairs, so their ends can be read as sockets.

Audio (``send_audio``): a pickled ``AudioHeader(n, chunk)`` then two raw frames (``send_bytes``: the slots as n
int64, the chunks as n x chunk float32), which the reader receives into fresh arrays and hands on as one
``messages.Audio``: no pickling on either side. A pickled audio message cost the engine's reader a zeroed
buffer and two copies of every sample under the GIL (a third of its time at 8,192 streams, py-spy, H200 host).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler

import numpy as np

from legato.server.frontends.messages import Audio

SOCKET_BUFFER_BYTES = 4 << 20  # asked of both ends (the kernel caps it): a whole audio message in few pieces
SIZE, BIG_SIZE, BODY = 0, 1, 2  # what the reader is filling


def enlarge_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:  # not allowed here: the default buffers still work
            pass


@dataclass(frozen=True)
class AudioHeader:
    """An ``Audio`` message's first frame: its two raw frames follow."""

    n: int
    chunk: int


def send_audio(conn, slots: np.ndarray, chunks: np.ndarray) -> None:
    """Chunks (n, chunk) float32 for ``slots`` (n,) as one audio message of three frames (writer thread only)."""
    conn.send(AudioHeader(len(slots), chunks.shape[1]))
    for frame in (np.ascontiguousarray(slots, np.int64), np.ascontiguousarray(chunks, np.float32)):
        conn.send_bytes(frame if frame.size else b"")  # an empty array cannot be cast to bytes


class MessageReader:
    """``messages()`` -> the messages completed by what the socket holds now (possibly none); ``EOFError`` once
    the other end has closed and every whole message before that was returned."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._eof = False
        self._raw: list[np.ndarray] = []  # an audio message's arrays: being filled, frame by frame
        self._raw_done = 0
        self._start(SIZE, bytearray(4))

    def _start(self, stage: int, target) -> None:
        self._stage, self._target, self._got = stage, memoryview(target).cast("B"), 0

    def messages(self) -> list:
        if self._eof:
            raise EOFError("the other end closed the pipe")
        out = []
        while True:
            want = len(self._target) - self._got
            if want:
                try:
                    k = self.sock.recv_into(self._target[self._got:], want, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return out
                if k == 0:
                    self._eof = True
                    if out:
                        return out
                    raise EOFError("the other end closed the pipe")
                self._got += k
                if self._got < len(self._target):
                    continue
            if self._stage == SIZE:
                size, = struct.unpack("!i", self._target)
                if size == -1:
                    self._start(BIG_SIZE, bytearray(8))
                else:
                    self._body(size)
            elif self._stage == BIG_SIZE:
                self._body(struct.unpack("!Q", self._target)[0])
            else:
                msg = self._finish_body()
                if msg is not None:
                    out.append(msg)
                self._start(SIZE, bytearray(4))

    def _body(self, size: int) -> None:
        if self._raw:  # the next raw frame of an audio message goes straight into its array
            target = self._raw[self._raw_done]
            if target.nbytes != size:
                raise ValueError(f"audio frame of {size} bytes, expected {target.nbytes}")
            self._start(BODY, target if size else bytearray(0))  # an empty array cannot be cast to bytes
        else:
            self._start(BODY, bytearray(size))

    def _finish_body(self):
        """The message the body completes, or None (an audio message waiting for its raw frames)."""
        if self._raw:
            self._raw_done += 1
            if self._raw_done < len(self._raw):
                return None
            slots, chunks = self._raw
            self._raw, self._raw_done = [], 0
            return Audio(slots, chunks)
        msg = ForkingPickler.loads(self._target)
        if isinstance(msg, AudioHeader):
            self._raw = [np.empty(msg.n, np.int64), np.empty((msg.n, msg.chunk), np.float32)]
            return None
        return msg
