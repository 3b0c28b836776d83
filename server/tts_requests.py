"""TTS requests, Sans-I/O: validate a ``SynthesizeRequest`` message, encode audio replies.

Pure functions over plain values so every rule is unit-tested without a
server. A bad request raises :class:`TtsRequestError` with the gRPC status
name it maps to (``INVALID_ARGUMENT``, ``NOT_FOUND``) and a message for people.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from legato.stream.audio_io import check_finite, encode_pcm
from legato.stream.errors import LegatoError
from legato.tts.voice import SynthesisRequest, Voice

MAX_TEXT_CHARS = 2000  # one request; longer documents go as several requests
MAX_REFERENCE_BYTES = 8 << 20  # zero-shot reference audio file
MAX_REFERENCE_SECONDS = 30.0
MIN_REFERENCE_SECONDS = 0.5  # a voice prompt shorter than this carries no voice
MIN_SPEED, MAX_SPEED = 0.25, 4.0
MIN_RATE, MAX_RATE = 8000, 192000
MAX_REQUEST_ID_CHARS = 128

# AudioEncoding enum values (server/proto/tts.proto)
UNSPECIFIED, PCM_S16LE, PCM_F32LE, WAV = 0, 1, 2, 3
ENCODING_NAMES = {PCM_S16LE: "s16le", PCM_F32LE: "f32le", WAV: "wav"}


class TtsRequestError(LegatoError, ValueError):
    code = "bad_request"

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ParsedRequest:
    voice: Voice
    request: SynthesisRequest
    sample_rate: int  # of the reply
    encoding: int  # PCM_S16LE, PCM_F32LE or WAV
    request_id: str


def _bad(message: str) -> TtsRequestError:
    return TtsRequestError("INVALID_ARGUMENT", message)


def decode_reference(data: bytes) -> tuple[torch.Tensor, int]:
    """An audio file's bytes -> ((n,) float32 mono, rate); any failure is INVALID_ARGUMENT."""
    import soundfile

    if len(data) > MAX_REFERENCE_BYTES:
        raise _bad(f"reference_audio is {len(data)} bytes; the limit is {MAX_REFERENCE_BYTES}")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for garbage
        raise _bad(f"reference_audio is not a readable audio file (WAV, FLAC, OGG): {exc}") from None
    audio = torch.from_numpy(samples).mean(dim=1)
    if audio.numel() == 0:
        raise _bad("reference_audio holds no samples")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _bad(f"reference_audio's sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
    if audio.numel() / rate < MIN_REFERENCE_SECONDS:
        raise _bad(f"reference_audio is {audio.numel() / rate:.3f} s long; it needs at least {MIN_REFERENCE_SECONDS} s")
    if audio.numel() / rate > MAX_REFERENCE_SECONDS:
        raise _bad(f"reference_audio is {audio.numel() / rate:.1f} s long; the limit is {MAX_REFERENCE_SECONDS:.0f} s")
    try:
        check_finite(audio)
    except LegatoError as exc:
        raise _bad(f"reference_audio: {exc}") from None
    return audio, int(rate)


def parse_request(
    *,
    text: str,
    voice: str,
    sample_rate_hz: int,
    encoding: int,
    speed: float,
    reference_audio: bytes,
    reference_text: str,
    request_id: str,
    voices: Mapping[str, Voice],
    default_voice: str,
    streaming: bool,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> ParsedRequest:
    if not text.strip():
        raise _bad("text is empty")
    if len(text) > max_text_chars:
        raise _bad(f"text has {len(text)} characters; the limit is {max_text_chars} (split long documents into requests)")
    name = voice or default_voice
    if name not in voices:
        raise TtsRequestError("NOT_FOUND", f"unknown voice {name!r}; voices: {', '.join(sorted(voices)) or 'none configured'}")
    v = voices[name]
    if encoding not in (UNSPECIFIED, PCM_S16LE, PCM_F32LE, WAV):
        raise _bad(f"unknown encoding {encoding}")
    encoding = encoding or PCM_S16LE
    if streaming and encoding == WAV:
        raise _bad("WAV is for Synthesize; SynthesizeStream sends PCM_S16LE or PCM_F32LE chunks")
    rate = sample_rate_hz or v.sample_rate
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _bad(f"sample_rate_hz must be 0 (the voice's {v.sample_rate} Hz) or lie in {MIN_RATE}..{MAX_RATE}, got {rate}")
    speed = speed or 1.0
    if not np.isfinite(speed) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise _bad(f"speed must lie in {MIN_SPEED}..{MAX_SPEED} (0 means 1.0), got {speed}")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise _bad(f"request_id is longer than {MAX_REQUEST_ID_CHARS} characters")
    ref, ref_rate = None, 0
    if reference_audio:
        if not v.supports_reference:
            raise _bad(f"voice {name!r} ({v.model}) does not take reference audio")
        if not reference_text.strip():
            raise _bad("reference_audio needs reference_text, its transcript")
        ref, ref_rate = decode_reference(reference_audio)
    elif reference_text:
        raise _bad("reference_text without reference_audio")
    req = SynthesisRequest(text, float(speed), ref, ref_rate, reference_text)
    return ParsedRequest(v, req, int(rate), int(encoding), request_id or uuid.uuid4().hex[:16])


def encode_audio(audio: torch.Tensor, encoding: int, sample_rate: int) -> bytes:
    """(n,) float32, clamped to [-1, 1] -> bytes of ``encoding`` (WAV: a whole 16-bit file); PCM as the WebSocket side."""
    samples = audio.detach().to(torch.float32).clamp(-1.0, 1.0)[:, None]
    if encoding == PCM_F32LE:
        return encode_pcm(samples, "f32le")
    pcm = encode_pcm(samples, "s16le")
    if encoding != WAV:
        return pcm
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.frombuffer(pcm, "<i2"), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
