"""Messages of a ``multiprocessing`` pipe read as far as they have arrived, never waiting for the rest.

The engine process reads every front end's pipe on one thread. ``Connection.recv`` blocks until its message is
whole, and a 5 MB audio message crosses a socket buffer of a few hundred KB in pieces, each written when the
sending front end's writer thread gets its own GIL back from a busy event loop: one slow sender held every other
front end's audio behind it. Here each readable pipe gives what it has (``MSG_DONTWAIT``) and a message is decoded
once whole. Wire format as ``Connection.send``: a 4-byte big-endian size (-1, then an 8-byte size, past 2 GB), a
pickle. Duplex ``multiprocessing`` pipes on POSIX are socket pairs, so their ends can be read as sockets.
"""

from __future__ import annotations

import socket
import struct
from multiprocessing.reduction import ForkingPickler

SOCKET_BUFFER_BYTES = 4 << 20  # asked of both ends (the kernel caps it): a whole audio message in few pieces
SIZE, BIG_SIZE, BODY = 0, 1, 2  # what the reader is filling


def enlarge_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:  # not allowed here: the default buffers still work
            pass


class MessageReader:
    """``messages()`` -> the messages completed by what the socket holds now (possibly none); ``EOFError`` once
    the other end has closed and every whole message before that was returned."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._eof = False
        self._start(SIZE, 4)

    def _start(self, stage: int, n: int) -> None:
        self._stage, self._buf, self._got = stage, bytearray(n), 0

    def messages(self) -> list:
        if self._eof:
            raise EOFError("the other end closed the pipe")
        out = []
        view = memoryview(self._buf)
        while True:
            try:
                k = self.sock.recv_into(view[self._got:], len(self._buf) - self._got, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return out
            if k == 0:
                self._eof = True
                if out:
                    return out
                raise EOFError("the other end closed the pipe")
            self._got += k
            if self._got < len(self._buf):
                continue
            if self._stage == BODY:
                out.append(ForkingPickler.loads(self._buf))
                self._start(SIZE, 4)
            elif self._stage == SIZE:
                size, = struct.unpack("!i", self._buf)
                self._start(BIG_SIZE, 8) if size == -1 else self._start(BODY, size)
            else:
                self._start(BODY, struct.unpack("!Q", self._buf)[0])
            view = memoryview(self._buf)
