"""State pools: preallocated per-stream state slots for one model.

The engine owns one :class:`StatePool` per streaming model. The pool holds the
state of up to ``capacity`` streams in one block on the model's device. A
stream acquires a slot when it starts and releases it when it ends; a step
runs on any subset of slots, so streams join and leave a batch at any step.

A step gathers the rows of its slots into a working state, runs the module,
and scatters the rows back only if the step succeeded. A failed step therefore
leaves every stream's saved state exactly as it was.
"""

from __future__ import annotations

from typing import Sequence

import torch
from legato.stream.module import StreamingModule
from legato.stream.slots import SlotAllocator
from legato.kernels.bytes import byte_view
from legato.stream.state import StreamState, row_words


class StatePool:
    """``capacity`` slots of ``module``'s state, preallocated on ``device``."""

    def __init__(self, module: StreamingModule, capacity: int, device: torch.device | str | None = None):
        if capacity <= 0:
            raise ValueError(f"pool capacity must be positive, got {capacity}")
        self.module = module
        self.capacity = capacity
        self.device = torch.device(device) if device is not None else module.param_device()
        self.state = module.init_state(capacity, device=self.device)
        self._fresh = module.init_state(1, device=self.device)
        self._zero_leaves = [bool((t.float() == 0).all()) for _, t in self._fresh.leaves()]  # for ``reset_rows``
        self._slots = SlotAllocator(capacity, f"state pool for {type(module).__name__} is full ({capacity} streams)")

    @property
    def in_use(self) -> int:
        return self._slots.in_use

    def acquire(self) -> int:
        """Take a free slot, reset to the initial state. Raises CapacityError when full."""
        slot = self._slots.acquire()
        self.reset([slot])
        return slot

    def release(self, slot: int) -> None:
        self._slots.release(slot)

    def rows(self, slots: Sequence[int]) -> torch.Tensor:
        return torch.as_tensor(list(slots), dtype=torch.long, device=self.device)

    def reset(self, slots: Sequence[int]) -> None:
        """Put the given slots back to the initial state, touching no other row
        (a stream may open while a step runs on other slots)."""
        self.reset_rows(self.rows(slots))

    def reset_rows(self, rows: torch.Tensor) -> None:
        """``reset`` by a device tensor of rows, with no host list and no copy of the fresh state per row (a CUDA
        graph can capture it; a first step of 4,096 FastConformer-L streams would otherwise materialise 10 GB of
        zeros): leaves that start at zero are filled in place, as 8-byte words where their rows allow."""
        n = rows.shape[0]
        for (_, dst), (_, fresh), zero in zip(self.state.leaves(), self._fresh.leaves(), self._zero_leaves):
            if zero:
                words = row_words(dst)
                (words if words is not None else byte_view(dst)).index_fill_(0, rows, 0)
            else:
                byte_view(dst).index_copy_(0, rows, byte_view(fresh.expand((n,) + fresh.shape[1:]).contiguous()))

    def gather(self, slots: Sequence[int]) -> StreamState:
        """A working copy of the given slots' state (batch = len(slots))."""
        return self.state.gather(self.rows(slots))

    def scatter(self, slots: Sequence[int], state: StreamState) -> None:
        """Commit a working state back into the given slots."""
        self.state.scatter_(self.rows(slots), state)

    def step(self, slots: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        """Run ``module.step`` on the given slots; commit state only on success."""
        work = self.gather(slots)
        y = self.module.step(x, work)
        self.scatter(slots, work)
        return y

    def flush(self, slots: Sequence[int]) -> torch.Tensor | None:
        work = self.gather(slots)
        y = self.module.flush(work)
        self.scatter(slots, work)
        return y
