"""Key/value caches for autoregressive models, in slots: one slot per request, preallocated.

``KvCache`` holds, per layer, keys and values of shape (slots + 1, kv_heads, max_tokens, head_dim) on the model's
device. A request takes a slot when it starts and frees it the moment it ends, so a new request can join at the
next step. A step writes its new tokens' keys/values at (slot, position) per token; attention reads each slot in
place (``kernels/slot_attention``), so slots need not be contiguous and nothing moves when a request ends. The
extra last slot, ``scratch``, is never handed out: padded rows of a captured decode step write there.
"""

from __future__ import annotations

import torch
from legato.stream.slots import SlotAllocator


class KvCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, slots: int, max_tokens: int, *,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (slots + 1, kv_heads, max_tokens, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slots, self.max_tokens, self.scratch = slots, max_tokens, slots
        self._slots = SlotAllocator(slots, f"all {slots} KV cache slots are in use", "KV slot")

    @property
    def in_use(self) -> int:
        return self._slots.in_use

    def acquire(self) -> int:
        return self._slots.acquire()

    def release(self, slot: int) -> None:
        self._slots.release(slot)

    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys/values of new tokens: ``slots``/``positions`` (N,) of each, k/v (N, kv_heads, head_dim)."""
        self.k[layer][slots, :, positions] = k.to(self.k[layer].dtype)
        self.v[layer][slots, :, positions] = v.to(self.v[layer].dtype)
