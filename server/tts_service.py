"""The TTS service core: runs voices on worker threads and streams resampled chunks to asyncio.

``stream(parsed)`` is an async iterator of ``(sample_offset, (n,) float32)``
at the requested rate. The voice runs in a bounded thread pool (model work
never touches the event loop); chunks cross to the loop through a bounded
queue, so a slow client stalls its own synthesis, not the server. Leaving the
iterator early (client cancel, deadline, error) sets the request's
``cancelled`` event: the voice stops at its next chunk and the worker frees.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Iterator, Mapping

import torch

from legato.server.tts_requests import ParsedRequest
from legato.stream.resample import Resampler
from legato.tts.voice import Voice

QUEUE_CHUNKS = 8  # chunks a request may run ahead of its client
PUT_POLL_S = 0.1  # how often a blocked worker looks for cancellation
_DONE = object()


def resampled_chunks(parsed: ParsedRequest, cancelled: threading.Event) -> Iterator[torch.Tensor]:
    """The voice's chunks for this request at the requested rate, (n,) float32; stops when ``cancelled`` is set.

    Closing it closes the voice's generator too, so a voice releases its model work at once."""
    voice = parsed.voice
    stream = Resampler(voice.sample_rate, parsed.sample_rate).stream()
    chunks = voice.stream(parsed.request, cancelled)
    try:
        for chunk in chunks:
            if cancelled.is_set():
                return
            y = stream.push(chunk.detach().to(torch.float32).cpu()[:, None])[:, 0]
            if y.numel():
                yield y
        tail = stream.flush()[:, 0]
        if tail.numel():
            yield tail
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


class TtsService:
    def __init__(self, voices: Mapping[str, Voice], default_voice: str | None = None, *, max_workers: int = 8):
        if not voices:
            raise ValueError("the TTS service needs at least one voice")
        self.voices = dict(voices)
        self.default_voice = default_voice or next(iter(self.voices))
        if self.default_voice not in self.voices:
            raise ValueError(f"default voice {self.default_voice!r} is not configured")
        self.executor = ThreadPoolExecutor(max_workers, thread_name_prefix="legato-tts")
        self.active = 0  # requests running (for metrics and tests)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _work(self, parsed: ParsedRequest, out: asyncio.Queue, loop: asyncio.AbstractEventLoop, cancelled: threading.Event) -> None:
        def put(item) -> bool:
            fut = asyncio.run_coroutine_threadsafe(out.put(item), loop)
            while not cancelled.is_set():
                try:
                    fut.result(PUT_POLL_S)
                    return True
                except TimeoutError:
                    continue
            fut.cancel()
            return False

        chunks = resampled_chunks(parsed, cancelled)
        try:
            for y in chunks:
                if not put(y):
                    return
            put(_DONE)
        except BaseException as exc:  # delivered to the request, which ends with a clear status
            put(exc)
        finally:
            chunks.close()

    async def stream(self, parsed: ParsedRequest) -> AsyncIterator[tuple[int, torch.Tensor]]:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
        cancelled = threading.Event()
        self.active += 1
        job = loop.run_in_executor(self.executor, self._work, parsed, out, loop, cancelled)
        offset = 0
        try:
            while True:
                item = await out.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield offset, item
                offset += item.shape[0]
        finally:
            cancelled.set()
            self.active -= 1
            job.add_done_callback(lambda f: f.exception())  # never "exception was never retrieved"

    async def synthesize(self, parsed: ParsedRequest) -> torch.Tensor:
        chunks = [c async for _, c in self.stream(parsed)]
        return torch.cat(chunks) if chunks else torch.zeros(0)
