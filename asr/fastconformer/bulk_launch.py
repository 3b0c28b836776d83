"""A bulk step launched on the device and not yet read back: what completing it needs.

Pipelining (``BulkTranscriber(pipeline=True)``): a step's device work is launched and its outputs copied to
page-locked host memory asynchronously; the step is completed (tokens read, ``on_step``) only after the next step
has been launched, so the host's work between two steps (taking the next batch of chunks from the queues, copying
it, the graph inputs; reading tokens, endpointing) runs while the device computes instead of between its steps.
Host state that the next step's launch depends on (frames decoded, chunks stepped) is advanced at launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LaunchedGroup:
    slots: np.ndarray  # (n,) the group's slots (one phase: first or later steps)
    frames: np.ndarray  # (n,) encoder frames decoded before this step: its tokens' frame offsets
    step_frames: int  # encoder frames the step adds to each
    outputs: tuple  # CTC: (best, keep) on the host, filled by an async copy; RNNT: the encoder's (y, valid) on the device


@dataclass
class LaunchedStep:
    rows: np.ndarray  # every slot stepped
    ready: np.ndarray  # when each row's chunk was complete (latency)
    started: float  # time.monotonic() at the take
    groups: list[LaunchedGroup]
    done: torch.cuda.Event | None  # recorded after the copies to the host (None on the CPU: nothing is async)


def to_host(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Device tensors -> page-locked host copies, asynchronously (valid once the stream reaches this point)."""
    out = []
    for t in tensors:
        if t.device.type == "cpu":
            out.append(t)
            continue
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        out.append(host.copy_(t, non_blocking=True))
    return tuple(out)


def pinned(array: np.ndarray) -> torch.Tensor:
    """A page-locked copy of a host array, to copy to the device without a host sync: a pageable copy waits for the
    stream's earlier work (here: the step in flight), a page-locked one is queued behind it."""
    return torch.from_numpy(np.ascontiguousarray(array)).pin_memory()


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without a host sync (``pinned``)."""
    if device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(array))
    return pinned(array).to(device, non_blocking=True)


class AudioUploads:
    """The steps' audio to the device on a side stream into two alternating device buffers: a pipelined step's
    chunks cross PCIe while the step before computes (on the step's own stream the copy queued behind it: 3 ms of
    a 16,384-row step's ~50 on an H200, 168 MB at ~55 GB/s); the step then reads them device to device."""

    def __init__(self, rows: int, chunk: int, device: torch.device):
        self.buffers = [torch.empty(rows, chunk, device=device) for _ in range(2)]
        self.free = [torch.cuda.Event() for _ in range(2)]  # recorded once a buffer's readers are queued
        self.stream = torch.cuda.Stream(device)

    def upload(self, audio: torch.Tensor, buffer: int) -> torch.Tensor:
        """``audio`` (n, chunk), page-locked -> a view of device buffer ``buffer`` (0 or 1) that the current
        stream may read (it waits for the copy). Call ``release(buffer)`` after queueing the readers."""
        dev = self.buffers[buffer][: len(audio)]
        self.stream.wait_event(self.free[buffer])  # the step that read this buffer last (two launches ago)
        with torch.cuda.stream(self.stream):
            dev.copy_(audio, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(self.stream)
        torch.cuda.current_stream(dev.device).wait_event(copied)
        return dev

    def release(self, buffer: int) -> None:
        self.free[buffer].record()
