"""The OpenAI-compatible audio API on the server's port (docs/HTTP.md): transcriptions, speech, models.

Every request runs as a stream on the same engine routes the WebSocket uses, so HTTP and live clients share one
scheduler, one set of limits and one transcript rule: a file is pushed through its model's live route as fast as
the engine takes it (back-pressure, fair share beside live streams) and its finals are the transcript; speech is
a voice route's audio, sent as it is synthesised. Nothing here runs model work on the event loop.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the HTTP status that says
whose fault it is (400 bad field, 401 token, 404 unknown model or voice, 413 too large, 503 capacity or draining).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

import numpy as np
import torch
from aiohttp import web

from legato.server.subtitles import srt, vtt
from legato.server.tts_requests import PCM_S16LE, TtsRequestError, encode_audio, parse_request
from legato.stream.errors import CapacityError
from legato.stream.frames import AudioChunk, ErrorEvent, TextEvent, TextKind

if TYPE_CHECKING:
    from legato.server.ws_server import TranscriptionServer

log = logging.getLogger("legato.server.http")

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
PUSH_S = 30.0  # seconds of a file per push: the engine splits them into its fair-share frames anyway
MAX_FILE_S = 4 * 3600.0  # an uploaded file's duration
# OpenAI's model and voice names, so existing client code runs unchanged: they mean the default model or voice.
ASR_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
TTS_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
SPEECH_FORMATS = {"pcm": "audio/pcm", "wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
PCM_RATE = 24000  # OpenAI's "pcm": 24 kHz 16-bit little-endian mono


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status)


@dataclass(frozen=True)
class TranscriptionForm:
    audio: torch.Tensor  # (n, 1) float32, mono
    rate: int
    model: str  # an engine route
    language: str | None
    prompt: str
    response_format: str
    words: bool  # timestamp_granularities[] has "word"
    stream: bool


class OpenAiApi:
    def __init__(self, server: "TranscriptionServer"):
        self.server = server

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._guard)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_post("/v1/audio/speech", self.speech)

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        """Under /v1: the bearer token, draining and the connection limit, and every failure in OpenAI's shape."""
        if not request.path.startswith("/v1/"):
            return await handler(request)
        server = self.server
        try:
            if not server.authorized(request):
                raise ApiError(401, "a bearer token is required: Authorization: Bearer <token>", code="invalid_api_key")
            if server.draining:
                raise ApiError(503, "the server is draining; try another instance", type_="server_error", code="draining")
            if len(server._sessions) + server._requests >= server.config.max_connections:
                raise ApiError(503, "server at capacity, try again later", type_="server_error", code="capacity")
            server._requests += 1
            try:
                return await handler(request)
            finally:
                server._requests -= 1
        except ApiError as exc:
            if exc.status in (401, 503):
                server.counters.refuse({401: "unauthorized", 503: exc.code or "capacity"}[exc.status])
            else:
                server.counters.error(exc.code or exc.type)
            return exc.response()
        except web.HTTPRequestEntityTooLarge:
            server.counters.error("file_too_large")
            return ApiError(413, f"the request is larger than {server.config.max_upload_bytes} bytes",
                            code="file_too_large").response()
        except web.HTTPException as exc:  # the router's 404 / 405
            return ApiError(exc.status, f"{request.method} {request.path}: {exc.reason}", code="not_found").response()

    # -- GET /v1/models

    async def models(self, request: web.Request) -> web.Response:
        tts = self.server.tts
        names = list(self.server.models) + ([f"tts:{v}" for v in tts.voices] if tts else [])
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "legato"} for n in names]
        return web.json_response({"object": "list", "data": data})

    # -- POST /v1/audio/transcriptions

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        form = await self._transcription_form(request)
        handle = await self._open(form)
        pusher = asyncio.create_task(self._push(handle, form))
        try:
            if form.stream:
                return await self._stream_text(request, handle, pusher)
            finals = [f async for f in self._finals(handle)]
            await pusher
            return _transcript(form, finals)
        finally:
            pusher.cancel()
            if not handle.finished:
                handle.cancel()

    async def _transcription_form(self, request: web.Request) -> TranscriptionForm:
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "send multipart/form-data with a 'file' field", param="file")
        post = await request.post()
        upload = post.get("file")
        if not isinstance(upload, web.FileField):
            raise ApiError(400, "the 'file' field (an audio file) is missing", param="file")
        data = upload.file.read()
        audio, rate = await asyncio.to_thread(_decode_audio, data)
        model = str(post.get("model") or "")
        if model in ASR_ALIASES or not model:
            model = self.server.default_model or ""
        if model not in self.server.models:
            loaded = ", ".join(self.server.models) or "none (this server runs no speech recognition)"
            raise ApiError(404, f"unknown model {model!r}; loaded: {loaded} (or {', '.join(ASR_ALIASES)})", param="model",
                           code="model_not_found")
        fmt = str(post.get("response_format") or "json")
        if fmt not in FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(FORMATS)}, got {fmt!r}", param="response_format")
        grains = set(post.getall("timestamp_granularities[]", [])) | set(post.getall("timestamp_granularities", []))
        if grains - {"segment", "word"}:
            raise ApiError(400, f"timestamp_granularities takes segment and word, got {sorted(grains)}", param="timestamp_granularities")
        if grains and fmt != "verbose_json":
            raise ApiError(400, "timestamp_granularities needs response_format verbose_json", param="timestamp_granularities")
        try:
            temperature = float(post.get("temperature") or 0)
        except ValueError:
            raise ApiError(400, "temperature must be a number", param="temperature") from None
        if temperature != 0:
            raise ApiError(400, "legato decodes deterministically (temperature 0): sampling is not offered", param="temperature")
        stream = str(post.get("stream") or "false").lower() == "true"
        if stream and fmt not in ("json", "text"):
            raise ApiError(400, "stream=true sends text events: response_format json or text", param="stream")
        language = str(post.get("language") or "") or None
        return TranscriptionForm(audio, rate, model, language, str(post.get("prompt") or "")[:1000], fmt, "word" in grains, stream)

    async def _open(self, form: TranscriptionForm):
        engine = self.server.engine
        options = {"interim_results": False, "sample_rate": form.rate, "language": form.language, "prompt": form.prompt}
        args = (self.server.config.latency_budget_s, options, "http-" + uuid.uuid4().hex[:12])
        try:
            return await engine.aopen_stream(*args, route=form.model)
        except CapacityError as exc:
            raise ApiError(503, str(exc), type_="server_error", code="capacity") from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    @staticmethod
    async def _push(handle, form: TranscriptionForm) -> None:
        step = int(PUSH_S * form.rate)
        for start in range(0, form.audio.shape[0], step):
            await handle.apush(AudioChunk(form.audio[start : start + step], form.rate, start))
        await handle.aend()

    @staticmethod
    async def _finals(handle) -> AsyncIterator[TextEvent]:
        async for frame in handle:
            if isinstance(frame, TextEvent) and frame.kind is TextKind.FINAL and frame.text.strip():
                yield frame
            elif isinstance(frame, ErrorEvent):
                raise ApiError(500 if frame.code == "stage_failed" else 400, frame.message, type_="server_error", code=frame.code)

    async def _stream_text(self, request: web.Request, handle, pusher: asyncio.Task) -> web.StreamResponse:
        """Server-sent events as OpenAI's: a ``transcript.text.delta`` per final, then ``transcript.text.done``."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        texts = []
        try:
            async for final in self._finals(handle):
                delta = (" " if texts else "") + final.text.strip()
                texts.append(final.text.strip())
                await response.write(_sse({"type": "transcript.text.delta", "delta": delta}))
            await pusher
            await response.write(_sse({"type": "transcript.text.done", "text": " ".join(texts)}))
        except ApiError as exc:  # the status is already sent: the error goes as an event
            await response.write(_sse({"type": "error", "error": {"message": exc.message, "type": exc.type, "code": exc.code}}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # -- POST /v1/audio/speech

    async def speech(self, request: web.Request) -> web.StreamResponse:
        tts = self.server.tts
        if tts is None:
            raise ApiError(404, "this server runs no text-to-speech (legato serve without --no-tts has the default voice)",
                           param="model", code="model_not_found")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "send a JSON body: {\"model\", \"input\", \"voice\"}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        fmt = str(body.get("response_format") or "mp3")
        if fmt not in SPEECH_FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(SPEECH_FORMATS)}, got {fmt!r}", param="response_format")
        voice = str(body.get("voice") or "")
        model = str(body.get("model") or "")
        if model.startswith("tts:"):  # a voice by its model id (GET /v1/models)
            voice = voice if voice and voice not in OPENAI_VOICES else model[4:]
        elif model and model not in TTS_ALIASES:
            raise ApiError(404, f"unknown model {model!r}: use {', '.join(TTS_ALIASES)} or a voice's id from /v1/models",
                           param="model", code="model_not_found")
        if voice in OPENAI_VOICES:
            voice = tts.default_voice
        try:
            speed = float(body.get("speed") or 1.0)
        except (TypeError, ValueError):
            raise ApiError(400, "speed must be a number", param="speed") from None
        try:
            parsed = parse_request(  # rate 0: the voice's own
                text=str(body.get("input") or ""), voice=voice, sample_rate_hz=PCM_RATE if fmt == "pcm" else 0,
                encoding=PCM_S16LE, speed=speed, reference_audio=b"", reference_text="", request_id="",
                voices=tts.voices, default_voice=tts.default_voice, streaming=True,
            )
        except TtsRequestError as exc:
            status = 404 if exc.status == "NOT_FOUND" else 400
            raise ApiError(status, str(exc), param="voice" if status == 404 else "input",
                           code="voice_not_found" if status == 404 else None) from None
        chunks = tts.stream(parsed)
        try:  # leaving early (the client went away) closes the stream: the voice stops
            return await self._send_speech(request, chunks, parsed.sample_rate, fmt)
        finally:
            await chunks.aclose()

    @staticmethod
    async def _send_speech(request: web.Request, chunks, rate: int, fmt: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": SPEECH_FORMATS[fmt]})
        try:
            first = await anext(chunks, None)  # a failure before any audio is still an error status
        except Exception as exc:  # noqa: BLE001 - the voice's own error, its message for the client
            raise ApiError(400, str(exc)) from None
        await response.prepare(request)
        if fmt in ("pcm", "wav"):  # streamed as synthesised
            if fmt == "wav":
                await response.write(_wav_header(rate))
            if first is not None:
                await response.write(encode_audio(first[1], PCM_S16LE, rate))
            async for _, audio in chunks:
                await response.write(encode_audio(audio, PCM_S16LE, rate))
        else:  # FLAC and MP3 encoders (libsndfile) write whole files: encoded once all audio is in
            parts = [first[1]] if first is not None else []
            parts += [a async for _, a in chunks]
            audio = torch.cat(parts) if parts else torch.zeros(0)
            await response.write(await asyncio.to_thread(_encode_file, audio, rate, fmt))
        await response.write_eof()
        return response


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF), as streamed WAV is sent: players read to the end."""
    import struct

    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def _encode_file(audio: torch.Tensor, rate: int, fmt: str) -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, audio.clamp(-1, 1).numpy(), rate, format=fmt.upper(), subtype="PCM_16" if fmt == "flac" else None)
    return buf.getvalue()


def _decode_audio(data: bytes) -> tuple[torch.Tensor, int]:
    """An uploaded file -> ((n, 1) float32 mono, rate); anything soundfile (libsndfile) cannot read is a 400."""
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types for garbage
        raise ApiError(400, f"the file is not audio that libsndfile reads (WAV, FLAC, OGG/Vorbis/Opus, MP3): {exc}",
                       param="file") from None
    if samples.shape[0] == 0:
        raise ApiError(400, "the file holds no audio", param="file")
    if samples.shape[0] / rate > MAX_FILE_S:
        raise ApiError(400, f"the file is {samples.shape[0] / rate:.0f} s long; the limit is {MAX_FILE_S:.0f} s", param="file")
    if not np.isfinite(samples).all():
        raise ApiError(400, "the file holds NaN or infinite samples", param="file")
    return torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1, keepdims=True))), int(rate)


def _transcript(form: TranscriptionForm, finals: list[TextEvent]) -> web.Response:
    text = " ".join(f.text.strip() for f in finals)
    duration = form.audio.shape[0] / form.rate
    # Whisper's last timestamp token can lie past the audio's end (a 2.925 s clip's segment ends at 3.00): times are
    # clipped to the file
    at = lambda t: round(min(max(t, 0.0), duration), 3)
    cues = [(at(f.start_s), at(f.end_s), f.text) for f in finals]
    if form.response_format == "text":
        return web.Response(text=text + "\n")
    if form.response_format == "srt":
        return web.Response(text=srt(cues), content_type="application/x-subrip")
    if form.response_format == "vtt":
        return web.Response(text=vtt(cues), content_type="text/vtt")
    if form.response_format == "json":
        return web.json_response({"text": text, "usage": {"type": "duration", "seconds": round(duration, 3)}})
    segments = [
        # legato reports no per-segment decoder statistics: the fields OpenAI's clients expect hold neutral values
        {"id": i, "seek": 0, "start": at(f.start_s), "end": at(f.end_s), "text": " " + f.text.strip(), "tokens": [],
         "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0, "no_speech_prob": 0.0}
        for i, f in enumerate(finals)
    ]
    body = {"task": "transcribe", "language": form.language or "en", "duration": round(duration, 3), "text": text,
            "segments": segments, "usage": {"type": "duration", "seconds": round(duration, 3)}}
    if form.words:
        body["words"] = [{"word": w.word.strip(), "start": at(w.start_s), "end": at(w.end_s)} for f in finals for w in f.words]
    return web.json_response(body)
