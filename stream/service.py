"""What a server needs of whatever runs its streams: the one contract of the in-process ``Engine``
(``stream/engine.py``), the slot-array ``BulkEngine`` (``server/bulk_engine.py``) and a front end's ``RemoteEngine``
(``server/frontends/process.py``). Servers (WebSocket, HTTP API) are written against these protocols only."""

from __future__ import annotations

from typing import AsyncIterator, Protocol, Sequence, runtime_checkable

from legato.stream.frames import AudioChunk, Frame
from legato.stream.metrics import MetricsSnapshot


@runtime_checkable
class StreamSession(Protocol):
    """One open stream: push input, end or cancel it, iterate its output frames (TextEvent, AudioChunk, ...,
    then EndOfStream or an ErrorEvent)."""

    @property
    def stream_id(self) -> str: ...

    @property
    def finished(self) -> bool: ...

    async def apush(self, chunk: AudioChunk) -> None:
        """Waits (without blocking the loop) while the stream's input queue is full: back-pressure."""

    async def aend(self) -> None: ...

    def cancel(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[Frame]: ...


@runtime_checkable
class StreamService(Protocol):
    """Routes (model names) whose streams a server may open; started by its owner, stopped when done."""

    @property
    def routes(self) -> Sequence[str]: ...

    def start(self) -> "StreamService": ...

    def stop(self) -> None: ...

    async def aopen_stream(self, budget_s: float | None = None, options: dict | None = None, stream_id: str | None = None,
                           route: str | None = None) -> StreamSession:
        """Raises CapacityError when full, UnknownRouteError for a route it does not serve, ValueError for an option
        the route cannot honour."""

    async def ametrics(self) -> MetricsSnapshot:
        """What ``/metrics`` reports of it now (a front end's: the engine process's and every front end's)."""
