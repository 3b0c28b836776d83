"""Key/value caches for autoregressive models, in slots: one slot per request, preallocated.

``KvCache`` holds, per layer, keys and values of shape (slots, kv_heads, max_tokens, head_dim) on the model's
device. A request takes a slot when it starts and frees it the moment it ends, so a new request can join at the
next step. A step writes the new tokens' keys/values at each row's positions and reads each row's prefix back
(``read``), so rows of different lengths (a long prompt being prefilled beside one-token decode steps) share one
batched forward.
"""

from __future__ import annotations

import threading

import torch

from legato.stream.errors import CapacityError


class KvCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, slots: int, max_tokens: int, *,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (slots, kv_heads, max_tokens, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slots, self.max_tokens = slots, max_tokens
        self._free = list(range(slots - 1, -1, -1))  # pop() gives the lowest free slot
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self.slots - len(self._free)

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise CapacityError(f"all {self.slots} KV cache slots are in use")
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._lock:
            if slot in self._free or not 0 <= slot < self.slots:
                raise ValueError(f"KV slot {slot} is not in use")
            self._free.append(slot)
            self._free.sort(reverse=True)

    def write(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys/values of valid tokens: ``rows``/``positions`` (N,) slot and position of each, k/v (N, kv_heads, head_dim)."""
        self.k[layer][rows, :, positions] = k.to(self.k[layer].dtype)
        self.v[layer][rows, :, positions] = v.to(self.v[layer].dtype)

    def read(self, layer: int, slots: torch.Tensor | None, length: int, rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, kv_heads, length, head_dim) prefixes of the given slots; ``slots=None`` means slots 0..rows-1, read as a
        view without copying (the stepper keeps running requests in the lowest slots for this)."""
        if slots is None:
            return self.k[layer][:rows, :, :length], self.v[layer][:rows, :, :length]
        return self.k[layer][slots, :, :length], self.v[layer][slots, :, :length]

    def move(self, src: int, dst: int) -> None:
        """Copy slot ``src``'s keys/values into ``dst`` (compaction after a request in a lower slot ends)."""
        for layer in range(len(self.k)):
            self.k[layer][dst].copy_(self.k[layer][src])
            self.v[layer][dst].copy_(self.v[layer][src])
