"""The streaming-module contract.

A streaming module is a stateless ``torch.nn.Module`` (weights only). Per-stream
memory lives in an explicit :class:`~legato.stream.state.StreamState`:

* ``init_state(batch_size, device)``: fresh state for ``batch_size`` streams.
  Fixed shapes, so a pool can preallocate it and a step can be graph-captured.
* ``step(x, state)``: process the next chunk of every stream in the batch,
  update ``state`` in place, return the output chunk. All rows of one step
  carry chunks of the same length.
* ``flush(state)``: end of stream; return what the module still holds (a
  transposed conv's overlap tail, a centred STFT's last frames). Empty by default.
* ``reset(state, mask)``: restart the streams whose ``mask`` row is true,
  leaving the others untouched.
* ``batch_key(state, row)``: rows whose keys are equal (and whose chunks have
  equal shapes) may share one step. ``None`` by default: any rows may. Modules
  whose output length depends on a per-stream phase (a strided conv's skip, a
  framer's buffered samples) return that phase, and the engine groups by it.
* ``forward(x)``: the offline (whole-sequence) computation. The contract every
  implementation is tested against: concatenating ``step`` outputs over any
  chunking, then ``flush``, equals ``forward`` on the whole input.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import nn

from legato.stream.state import StreamState


class StreamingModule(nn.Module):
    """Base class; subclasses implement ``init_state``, ``step`` and ``forward``."""

    #: axis of the time dimension in ``step``/``forward`` inputs and outputs
    time_axis: int = -1

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> StreamState:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        raise NotImplementedError

    def flush(self, state: StreamState) -> torch.Tensor | None:
        return None

    def batch_key(self, state: StreamState, row: int) -> Hashable:
        return None

    def reset(self, state: StreamState, mask: torch.Tensor) -> None:
        fresh = self.init_state(1, device=state.device)
        state.reset_(mask.to(state.device), fresh)

    def param_device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


def run_streaming(
    module: StreamingModule,
    x: torch.Tensor,
    chunk_sizes: Sequence[int] | int,
    *,
    flush: bool = True,
) -> torch.Tensor:
    """Feed ``x`` to ``module`` chunk by chunk along its time axis; concatenate outputs.

    ``chunk_sizes`` is one size, repeated, or a list used in order and then
    repeated from its last entry. Used by tests and by offline tools that want
    exactly the streaming numerics.
    """
    axis = module.time_axis % x.dim()
    total = x.shape[axis]
    sizes = [chunk_sizes] if isinstance(chunk_sizes, int) else list(chunk_sizes)
    state = module.init_state(x.shape[0], device=x.device)
    outputs: list[torch.Tensor] = []
    start, i = 0, 0
    while start < total:
        size = sizes[min(i, len(sizes) - 1)]
        chunk = x.narrow(axis, start, min(size, total - start))
        outputs.append(module.step(chunk, state))
        start += chunk.shape[axis]
        i += 1
    if flush:
        tail = module.flush(state)
        if tail is not None:
            outputs.append(tail)
    out_axis = module.time_axis % outputs[0].dim() if outputs else axis
    return torch.cat(outputs, dim=out_axis)


def random_splits(total: int, generator: torch.Generator, max_chunk: int = 17) -> list[int]:
    """Random chunk sizes in [1, max_chunk] summing to ``total`` (for split tests)."""
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(int(torch.randint(1, max_chunk + 1, (1,), generator=generator)))
    sizes[-1] -= sum(sizes) - total
    return sizes
