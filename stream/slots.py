"""Free-slot bookkeeping shared by preallocated per-stream storage (state pools, KV caches).

Slots are handed out from 0 up, then the most recently released first; any thread may acquire and release.
"""

from __future__ import annotations

import threading

from legato.stream.errors import CapacityError


class SlotAllocator:
    def __init__(self, capacity: int, full_message: str, what: str = "slot"):
        """``full_message``: the CapacityError text when every slot is taken; ``what`` names a slot in errors."""
        self.capacity, self.full_message, self.what = capacity, full_message, what
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out slot 0 first
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise CapacityError(self.full_message)
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._lock:
            if slot in self._free or not 0 <= slot < self.capacity:
                raise ValueError(f"{self.what} {slot} is not in use")
            self._free.append(slot)
