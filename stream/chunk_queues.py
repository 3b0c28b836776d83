"""Per-slot bounded queues of fixed-size audio chunks on the host, filled by producers, drained in bulk.

For paths that step tens of thousands of streams as arrays (``asr/fastconformer/bulk.py``): a push copies samples
into the slot's queue; ``take`` returns every slot with a complete chunk, oldest first, gathered into one staging
buffer in a single vectorised pass. The queues are page-locked when the consumer runs on CUDA, so a batch reaches
the device in one DMA. A slot holds at most ``depth`` complete chunks: a push beyond is refused, nothing queued.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from legato.stream.errors import CapacityError, NonFiniteAudioError

class ChunkQueues:
    def __init__(self, capacity: int, chunk: int, *, depth: int, max_take: int, pinned: bool):
        """``depth``: complete chunks a slot may have waiting."""
        self.capacity, self.chunk, self.depth = capacity, chunk, depth
        self._audio_t = torch.zeros(capacity * depth, chunk, pin_memory=pinned)
        self._audio = self._audio_t.numpy().reshape(capacity, depth, chunk)
        # two staging buffers: a pipelined consumer takes the next batch while the device still reads the last
        self._staging = [torch.zeros(min(max_take, capacity), chunk, pin_memory=pinned) for _ in range(2)]
        self._ready = np.zeros((capacity, depth), np.float64)  # when each queued chunk was completed
        self._head = np.zeros(capacity, np.int64)  # oldest queued chunk
        self._count = np.zeros(capacity, np.int64)  # complete chunks queued
        self._fill = np.zeros(capacity, np.int64)  # samples in the chunk being filled
        self.refused = 0  # pushes refused for a full queue, ever (the consumer behind: a server's stats log)
        self._lock = threading.Lock()

    def reset(self, slots: np.ndarray) -> None:
        with self._lock:
            self._head[slots] = self._count[slots] = self._fill[slots] = 0

    def push(self, slot: int, samples: np.ndarray) -> None:
        """Queue float32 samples (any length). ``CapacityError`` (nothing queued) past ``depth`` complete chunks,
        ``NonFiniteAudioError`` for NaN or infinite samples."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            raise NonFiniteAudioError("audio holds NaN or infinite samples")
        with self._lock:
            free = (self.depth - self._count[slot]) * self.chunk - self._fill[slot]
            if len(samples) > free:
                self.refused += 1
                raise CapacityError(f"stream in slot {slot} has {self._count[slot]} chunks waiting (the consumer is behind)")
            now, i = time.monotonic(), 0
            while i < len(samples):
                buf = (self._head[slot] + self._count[slot]) % self.depth
                n = min(len(samples) - i, self.chunk - self._fill[slot])
                self._audio[slot, buf, self._fill[slot]:self._fill[slot] + n] = samples[i:i + n]
                self._fill[slot] += n
                i += n
                if self._fill[slot] == self.chunk:
                    self._ready[slot, buf] = now
                    self._count[slot] += 1
                    self._fill[slot] = 0

    def push_many(self, slots: np.ndarray, chunks: np.ndarray, arrived: np.ndarray | None = None) -> np.ndarray:
        """One whole chunk for each of ``slots`` (distinct, none mid-chunk) from ``chunks`` (n, chunk), in one array
        operation; ``arrived`` (n,) ``time.monotonic()`` seconds when each chunk's last sample reached the front end
        (default: now), from which latency is counted. Returns the mask of slots refused for a full queue (nothing
        queued for them)."""
        slots = np.asarray(slots, np.int64)
        if chunks.shape != (len(slots), self.chunk):
            raise ValueError(f"chunks must be ({len(slots)}, {self.chunk}), got {chunks.shape}")
        if not np.isfinite(chunks).all():
            raise NonFiniteAudioError("audio holds NaN or infinite samples")
        with self._lock:
            if (self._fill[slots] != 0).any():
                raise ValueError("push_many needs streams at a chunk boundary (use push for partial chunks)")
            full = self._count[slots] >= self.depth
            some_full = bool(full.any())
            self.refused += int(full.sum()) if some_full else 0
            ok = slots[~full] if some_full else slots
            buf = (self._head[ok] + self._count[ok]) % self.depth
            self._audio[ok, buf] = chunks[~full] if some_full else chunks
            if arrived is None:
                self._ready[ok, buf] = time.monotonic()
            else:
                self._ready[ok, buf] = np.asarray(arrived, np.float64)[~full] if some_full else arrived
            self._count[ok] += 1
        return full

    def take(self, max_n: int, buffer: int = 0) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
        """Slots with a complete chunk, oldest first, up to ``max_n``: (slots, their chunks in staging buffer
        ``buffer`` (0 or 1), ready times). Each buffer is reused: the caller's use of that buffer's previous take
        must be complete. One consumer: ``take``, ``take_one``, ``drain_partial`` and ``reset`` never overlap
        (the bulk path calls them under its step lock); producers may push meanwhile."""
        with self._lock:
            staging = self._staging[buffer]
            rows = np.flatnonzero(self._count > 0)
            ready = self._ready[rows, self._head[rows]]
            order = np.argsort(ready, kind="stable")[: min(max_n, len(staging))]
            rows, ready = rows[order], ready[order]
            index = torch.from_numpy(rows * self.depth + self._head[rows])
        # the copy outside the lock (16,384 chunks: 168 MB, milliseconds the producers would wait): producers write
        # only at a queue's tail, which is never a place being read while its chunk is still counted
        audio = torch.index_select(self._audio_t, 0, index, out=staging[: len(rows)])
        with self._lock:
            self._head[rows] = (self._head[rows] + 1) % self.depth
            self._count[rows] -= 1
        return rows, audio, ready

    def counts(self, slots: np.ndarray) -> np.ndarray:
        """Complete chunks waiting in each of ``slots``' queues (a copy: an index array)."""
        return self._count[slots]

    def queued(self, slot: int) -> int:
        """Complete chunks waiting in the slot's queue."""
        return int(self._count[slot])

    def room(self, slots: np.ndarray) -> np.ndarray:
        """Whole chunks each of ``slots`` can still take (its queue's free places, a chunk being filled counted)."""
        return self.depth - self._count[slots] - (self._fill[slots] > 0)

    def waiting(self) -> int:
        """Complete chunks waiting in all queues."""
        return int(self._count.sum())

    def take_one(self, slot: int) -> torch.Tensor | None:
        """The slot's oldest complete chunk (1, chunk), a copy, or None."""
        with self._lock:
            if not self._count[slot]:
                return None
            audio = torch.from_numpy(self._audio[slot, self._head[slot]][None].copy())
            self._head[slot] = (self._head[slot] + 1) % self.depth
            self._count[slot] -= 1
        return audio

    def drain_partial(self, slot: int) -> np.ndarray:
        """The samples of the slot's chunk being filled (a copy); the slot's queue is emptied."""
        with self._lock:
            partial = self._audio[slot, self._head[slot], : self._fill[slot]].copy()
            self._count[slot] = self._fill[slot] = 0
        return partial
