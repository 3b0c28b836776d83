"""What a front end and the engine process say to each other over their pipe: one dataclass per message.

Front end -> engine: ``Open``, ``Audio``, ``End``, ``Cancel``, ``Ready``, ``ServerCounters`` (each second),
``MetricsRequest``. Engine -> front end: ``Setup``, ``Opened``, ``Refused``, ``Updates``, ``StreamError``,
``MetricsReply``. ``Audio`` crosses as raw frames (``pipe.send_audio``); the others are
pickled whole. A receiver dispatches on the type (``match``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from legato.asr.fastconformer.bulk_tokens import TokenUpdates
from legato.stream.metrics import MetricsSnapshot


@dataclass(frozen=True)
class Open:
    key: int  # the front end's request number, echoed in Opened / Refused
    options: dict
    route: str | None


@dataclass(frozen=True, eq=False)
class Audio:
    slots: np.ndarray  # (n,) int64: the stream of each chunk (a stream's chunks in order)
    chunks: np.ndarray  # (n, chunk) float32: whole model chunks


@dataclass(frozen=True, eq=False)
class End:
    slot: int
    tail: np.ndarray  # the samples after the last whole chunk


@dataclass(frozen=True)
class Cancel:
    slot: int


@dataclass(frozen=True)
class Ready:
    """The front end listens: the engine may report the server up."""


@dataclass(frozen=True)
class Setup:
    model_proto: bytes  # the SentencePiece model: front ends build the words
    frame_s: float


@dataclass(frozen=True)
class Opened:
    key: int
    slot: int


@dataclass(frozen=True)
class Refused:
    key: int
    code: str  # "capacity" or "bad_request"
    message: str


@dataclass(frozen=True, eq=False)
class Updates:
    updates: TokenUpdates  # one engine step's tokens of this front end's streams


@dataclass(frozen=True)
class StreamError:
    slot: int
    code: str
    message: str


@dataclass(frozen=True, eq=False)
class ServerCounters:
    """A front end's server counters (refusals, errors, messages), sent each second for the engine's aggregate."""

    snapshot: MetricsSnapshot


@dataclass(frozen=True)
class MetricsRequest:
    key: int  # echoed in MetricsReply


@dataclass(frozen=True, eq=False)
class MetricsReply:
    key: int
    snapshot: MetricsSnapshot  # the engine's and every front end's: the whole server
