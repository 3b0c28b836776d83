"""The live-transcription WebSocket protocol, Sans-I/O.

Pure state machine over already-framed WebSocket messages: no sockets, no
asyncio, so it is unit-tested and fuzzed directly. The server feeds each
received message to a :class:`ProtocolSession` and carries out the actions
it returns. The wire format is documented in docs/PROTOCOL.md.

Client -> server: one JSON ``start`` text message, binary audio messages,
one JSON ``end`` text message. Server -> client: ``ready``, ``partial``,
``final``, ``error``, ``end`` JSON text messages.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from legato.stream.audio_io import MAX_CHANNELS, PcmFormat, decode_pcm
from legato.stream.errors import AudioFormatError, LegatoError
from legato.stream.frames import TextEvent, TextKind

PROTOCOL_VERSION = 1
MAX_JSON_BYTES = 8 * 1024  # a start message is a few hundred bytes
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192000


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses (RFC 6455 section 7.4)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    UNSUPPORTED_DATA = 1003  # audio before start, text where audio belongs
    INVALID_PAYLOAD = 1007  # bad JSON, bad audio bytes
    POLICY_VIOLATION = 1008  # authentication
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # capacity


class ProtocolError(LegatoError, ValueError):
    """A client message that breaks the protocol; ``close_code`` says how the server closes."""

    code = "protocol"

    def __init__(self, code: str, message: str, close_code: CloseCode):
        super().__init__(message)
        self.code, self.close_code = code, close_code


@dataclass(frozen=True)
class Endpointing:
    enabled: bool = True
    threshold: float = 0.5  # speech probability above which a VAD frame is speech
    min_silence_ms: int = 500  # silence that ends an utterance


@dataclass(frozen=True)
class StartRequest:
    """A validated start message."""

    pcm: PcmFormat
    interim_results: bool = True
    model: str | None = None
    language: str = "en"
    endpointing: Endpointing = field(default_factory=Endpointing)
    options: dict[str, Any] = field(default_factory=dict)
    lookahead_ms: int | None = None  # cache-aware models: which lookahead (right context) to stream with
    decoder: str | None = None  # hybrid models: "rnnt" or "ctc"
    token: str | None = field(default=None, repr=False)  # bearer token for clients that cannot set headers (browsers)


@dataclass(frozen=True)
class Start:
    request: StartRequest


@dataclass(frozen=True)
class Audio:
    samples: torch.Tensor  # (num_samples, channels) float32


@dataclass(frozen=True)
class End:
    pass


@dataclass(frozen=True)
class Reject:
    """Send an error message, then close with ``close_code``."""

    code: str
    message: str
    close_code: CloseCode


Action = Union[Start, Audio, End, Reject]


class Phase(enum.Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    ENDED = "ended"
    CLOSED = "closed"


START_FIELDS = {
    "type", "sample_rate", "encoding", "channels", "interim_results", "model", "language", "endpointing", "options", "token",
    "lookahead_ms", "decoder",
}
MAX_LOOKAHEAD_MS = 10_000
ENDPOINT_FIELDS = {"enabled", "threshold", "min_silence_ms"}


def _bad(message: str, code: str = "bad_request", close: CloseCode = CloseCode.INVALID_PAYLOAD) -> ProtocolError:
    return ProtocolError(code, message, close)


def _typed(obj: dict, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """``obj[key]`` if it has the JSON type ``kind``, ``default`` if absent, else a clear error."""
    if key not in obj:
        return default
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python: refuse true/false where a number belongs.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise _bad(f"field {key!r} must be {names}, got {json.dumps(value)[:40]}")
    return value


def parse_json(text: str) -> dict:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_JSON_BYTES:
        raise _bad(f"text message over {MAX_JSON_BYTES} bytes", "message_too_big", CloseCode.MESSAGE_TOO_BIG)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, and ValueError for an int over Python's digit limit
        raise _bad(f"text messages must be JSON objects: {exc}", "bad_json") from None
    if not isinstance(obj, dict):
        raise _bad("text messages must be JSON objects", "bad_json")
    return obj


def parse_start(obj: dict) -> StartRequest:
    unknown = set(obj) - START_FIELDS
    if unknown:
        raise _bad(f"unknown start field(s): {', '.join(sorted(unknown))}")
    rate = _typed(obj, "sample_rate", int, None)
    if rate is None:
        raise _bad("start needs sample_rate (Hz)")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise _bad(f"sample_rate must lie in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, got {rate}", "bad_sample_rate")
    encoding = _typed(obj, "encoding", str, "s16le")
    channels = _typed(obj, "channels", int, 1)
    if not 1 <= channels <= MAX_CHANNELS:
        raise _bad(f"channels must lie in 1..{MAX_CHANNELS}, got {channels}", "bad_audio")
    try:
        pcm = PcmFormat(encoding, rate, channels)
    except LegatoError as exc:
        raise _bad(str(exc), exc.code) from None
    ep = _typed(obj, "endpointing", (dict, bool), True)
    if isinstance(ep, bool):
        endpointing = Endpointing(enabled=ep)
    else:
        if set(ep) - ENDPOINT_FIELDS:
            raise _bad(f"unknown endpointing field(s): {', '.join(sorted(set(ep) - ENDPOINT_FIELDS))}")
        threshold = _typed(ep, "threshold", (int, float), 0.5)
        silence = _typed(ep, "min_silence_ms", int, 500)
        if not 0.0 < threshold < 1.0 or not 0 < silence <= 10_000:
            raise _bad("endpointing threshold must lie in (0, 1) and min_silence_ms in 1..10000")
        endpointing = Endpointing(_typed(ep, "enabled", bool, True), float(threshold), silence)
    lookahead_ms = _typed(obj, "lookahead_ms", int, None)
    if lookahead_ms is not None and not 0 <= lookahead_ms <= MAX_LOOKAHEAD_MS:
        raise _bad(f"lookahead_ms must lie in 0..{MAX_LOOKAHEAD_MS}, got {lookahead_ms}")
    return StartRequest(
        pcm=pcm,
        interim_results=_typed(obj, "interim_results", bool, True),
        model=_typed(obj, "model", str, None),
        language=_typed(obj, "language", str, "en"),
        endpointing=endpointing,
        options=_typed(obj, "options", dict, {}),
        lookahead_ms=lookahead_ms,
        decoder=_typed(obj, "decoder", str, None),
        token=_typed(obj, "token", str, None),
    )


class ProtocolSession:
    """One connection's protocol state. Feed messages in, carry out the actions out."""

    def __init__(self, max_message_bytes: int = 1 << 20):
        self.phase = Phase.AWAITING_START
        self.max_message_bytes = max_message_bytes
        self.request: StartRequest | None = None
        self.samples_received = 0

    def _reject(self, err: ProtocolError | LegatoError) -> list[Action]:
        self.phase = Phase.CLOSED
        close = getattr(err, "close_code", CloseCode.INVALID_PAYLOAD)
        return [Reject(err.code, str(err), close)]

    def receive_text(self, text: str) -> list[Action]:
        if self.phase == Phase.CLOSED:
            return []
        try:
            obj = parse_json(text)
            kind = obj.get("type")
            if self.phase == Phase.AWAITING_START:
                if kind != "start":
                    raise _bad(f"the first message must be a start message, got type {json.dumps(kind)[:40]}", "expected_start", CloseCode.UNSUPPORTED_DATA)
                self.request = parse_start(obj)
                self.phase = Phase.STREAMING
                return [Start(self.request)]
            if self.phase == Phase.STREAMING and kind == "end":
                if set(obj) - {"type"}:
                    raise _bad("the end message has no fields besides type")
                self.phase = Phase.ENDED
                return [End()]
            raise _bad(f"unexpected text message of type {json.dumps(kind)[:40]} while {self.phase.value}; audio goes in binary messages", "unexpected_message", CloseCode.UNSUPPORTED_DATA)
        except ProtocolError as err:
            return self._reject(err)

    def receive_binary(self, data: bytes) -> list[Action]:
        if self.phase == Phase.CLOSED:
            return []
        if self.phase != Phase.STREAMING:
            what = "before the start message" if self.phase == Phase.AWAITING_START else "after the end message"
            return self._reject(_bad(f"audio received {what}", "unexpected_audio", CloseCode.UNSUPPORTED_DATA))
        if len(data) > self.max_message_bytes:
            return self._reject(_bad(f"audio message of {len(data)} bytes is over the {self.max_message_bytes}-byte limit", "message_too_big", CloseCode.MESSAGE_TOO_BIG))
        try:
            samples = decode_pcm(data, self.request.pcm)
        except AudioFormatError as err:
            return self._reject(ProtocolError(err.code, str(err), CloseCode.INVALID_PAYLOAD))
        self.samples_received += samples.shape[0]
        return [Audio(samples)] if samples.shape[0] else []


# -- server messages -------------------------------------------------------------


def ready_message(session_id: str, model: str, sample_rate: int) -> dict:
    return {"type": "ready", "protocol": PROTOCOL_VERSION, "session_id": session_id, "model": model, "sample_rate": sample_rate}


def text_message(event: TextEvent) -> dict:
    msg = {
        "type": event.kind.value,
        "text": event.text,
        "start": round(event.start_s, 3),
        "end": round(event.end_s, 3),
    }
    if event.words:
        msg["words"] = [{"word": w.word, "start": round(w.start_s, 3), "end": round(w.end_s, 3)} for w in event.words]
    return msg


def error_message(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


def end_message() -> dict:
    return {"type": "end"}


def is_final(event: TextEvent) -> bool:
    return event.kind == TextKind.FINAL
