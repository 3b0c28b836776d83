"""gRPC front end of the TTS service (``legato.tts.v1.Synthesizer``), with health checking and reflection.

Limits: ``max_concurrent_rpcs`` synthesis calls at once (past it RESOURCE_EXHAUSTED), counted by the
servicer itself so that health checks and reflection never take synthesis capacity (gRPC's own
``maximum_concurrent_rpcs`` counts every call: eight unauthenticated ``Health/Watch`` streams would have
shut synthesis out); HTTP/2 streams per connection (twice that), message sizes, the text and
reference-audio limits of ``tts_requests``.
Optional bearer-token auth (metadata ``authorization: Bearer TOKEN``; the
health service stays open for load balancers) and TLS from PEM files.
Deadlines and cancellations end the request's handler, which stops its
synthesis (``TtsService``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from legato.server.auth import check_token, token_matches
from legato.server.log_text import loggable
from legato.server.tts_proto import load
from legato.server.tts_requests import TtsRequestError, encode_audio, parse_request
from legato.server.tts_service import TtsService
from legato.stream.errors import CapacityError

log = logging.getLogger("legato.grpc")
SERVICE_NAME = "legato.tts.v1.Synthesizer"
DRAIN_DEADLINE_S = 30.0  # SIGTERM: how long synthesis calls in flight may take to finish
HEALTH_SERVICE = "grpc.health.v1.Health"


@dataclass(frozen=True)
class GrpcConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    max_concurrent_rpcs: int = 64
    max_receive_bytes: int = 16 << 20  # a request with reference audio
    max_send_bytes: int = 64 << 20  # a whole WAV from Synthesize
    auth_token: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


class _TokenAuth(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self.token = token

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required: metadata 'authorization: Bearer TOKEN'")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):
        if details.method.startswith(f"/{HEALTH_SERVICE}/"):
            return await continuation(details)
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        if token_matches(sent.removeprefix("Bearer "), self.token):
            return await continuation(details)
        return self._deny


MALFORMED = object()  # what a request's bytes decode to when they are no message of its type


def _lenient(parse):
    """A request deserializer that returns MALFORMED instead of raising: gRPC would answer UNKNOWN, we INVALID_ARGUMENT."""

    def deserialize(raw: bytes):
        try:
            return parse(raw)
        except Exception:  # protobuf's DecodeError, and whatever a truncated message raises
            return MALFORMED

    return deserialize


async def _refuse_malformed(request, context) -> None:
    if request is MALFORMED:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid protobuf message of its type")


def _register(servicer, server, pb2) -> None:
    """The Synthesizer's methods, as the generated ``add_SynthesizerServicer_to_server`` would add them, with lenient parsing."""
    unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    handlers = {
        "Synthesize": unary(servicer.Synthesize, _lenient(pb2.SynthesizeRequest.FromString), pb2.SynthesizeResponse.SerializeToString),
        "SynthesizeStream": stream(servicer.SynthesizeStream, _lenient(pb2.SynthesizeRequest.FromString), pb2.AudioChunk.SerializeToString),
        "ListVoices": unary(servicer.ListVoices, _lenient(pb2.ListVoicesRequest.FromString), pb2.ListVoicesResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class _SynthesisQuota:
    """Synthesis calls in flight (all on the event loop: no lock); past ``limit`` a call is refused, not queued;
    once ``closing`` (draining) every new call is refused UNAVAILABLE while the ones in flight finish."""

    def __init__(self, limit: int):
        self.limit, self.used, self.closing = limit, 0, False
        self.idle = asyncio.Event()
        self.idle.set()

    async def enter(self, context) -> None:
        if self.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is draining; try another replica")
        if self.used >= self.limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {self.limit} synthesis calls at once; try again later")
        self.used += 1
        self.idle.clear()

    def leave(self) -> None:
        self.used -= 1
        if not self.used:
            self.idle.set()


def _servicer(service: TtsService, quota: _SynthesisQuota):
    pb2, pb2_grpc = load()
    STATUS = {"INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT, "NOT_FOUND": grpc.StatusCode.NOT_FOUND}

    async def parse(request, context, streaming: bool):
        await _refuse_malformed(request, context)
        try:
            return parse_request(
                text=request.text, voice=request.voice, sample_rate_hz=request.sample_rate_hz, encoding=request.encoding,
                speed=request.speed, reference_audio=request.reference_audio, reference_text=request.reference_text,
                request_id=request.request_id, voices=service.voices, default_voice=service.default_voice, streaming=streaming,
            )
        except TtsRequestError as exc:
            await context.abort(STATUS[exc.status], str(exc))

    async def failed(context, parsed, exc: Exception):
        if isinstance(exc, CapacityError):
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            code = grpc.StatusCode.INVALID_ARGUMENT if isinstance(exc, ValueError) else grpc.StatusCode.INTERNAL
        log.warning("request %s (voice %s) failed: %s", loggable(parsed.request_id), parsed.voice.name, loggable(exc))
        await context.abort(code, f"synthesis failed: {exc}")

    class Synthesizer(pb2_grpc.SynthesizerServicer):
        async def Synthesize(self, request, context):
            parsed = await parse(request, context, streaming=False)
            await quota.enter(context)
            try:
                audio = await service.synthesize(parsed)
            except Exception as exc:
                await failed(context, parsed, exc)
            finally:
                quota.leave()
            return pb2.SynthesizeResponse(
                audio=encode_audio(audio, parsed.encoding, parsed.sample_rate), sample_rate_hz=parsed.sample_rate,
                encoding=parsed.encoding, num_samples=audio.shape[0], request_id=parsed.request_id,
            )

        async def SynthesizeStream(self, request, context):
            parsed = await parse(request, context, streaming=True)
            await quota.enter(context)
            offset = 0
            try:
                async for offset, chunk in service.stream(parsed):
                    yield pb2.AudioChunk(
                        audio=encode_audio(chunk, parsed.encoding, parsed.sample_rate), sample_offset=offset,
                        num_samples=chunk.shape[0], sample_rate_hz=parsed.sample_rate, encoding=parsed.encoding,
                        request_id=parsed.request_id,
                    )
                    offset += chunk.shape[0]
            except Exception as exc:
                await failed(context, parsed, exc)
            finally:  # also when the client cancels or its deadline passes
                quota.leave()
            yield pb2.AudioChunk(sample_offset=offset, sample_rate_hz=parsed.sample_rate, encoding=parsed.encoding, last=True, request_id=parsed.request_id)

        async def ListVoices(self, request, context):
            await _refuse_malformed(request, context)
            voices = [
                pb2.Voice(name=v.name, model=v.model, native_sample_rate_hz=v.sample_rate, supports_reference_audio=v.supports_reference, language=v.language)
                for v in service.voices.values()
            ]
            return pb2.ListVoicesResponse(voices=voices, default_voice=service.default_voice)

    return pb2, pb2_grpc, Synthesizer()


class TtsGrpcServer:
    def __init__(self, service: TtsService, config: GrpcConfig = GrpcConfig()):
        check_token(config.auth_token)
        self.service, self.config = service, config
        self.server: grpc.aio.Server | None = None
        self.port = config.port
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()

    @property
    def target(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> "TtsGrpcServer":
        c = self.config
        self.quota = _SynthesisQuota(c.max_concurrent_rpcs)
        pb2, pb2_grpc, servicer = _servicer(self.service, self.quota)
        self.server = grpc.aio.server(
            interceptors=[_TokenAuth(c.auth_token)] if c.auth_token is not None else None,
            options=[
                ("grpc.max_receive_message_length", c.max_receive_bytes), ("grpc.max_send_message_length", c.max_send_bytes),
                ("grpc.max_concurrent_streams", 2 * c.max_concurrent_rpcs),  # per connection: bounds a flood of Health/Watch
            ],
        )
        _register(servicer, self.server, pb2)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (pb2.DESCRIPTOR.services_by_name["Synthesizer"].full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        address = f"{c.host}:{c.port}"
        if c.certfile and c.keyfile:
            with open(c.keyfile, "rb") as k, open(c.certfile, "rb") as cert:
                creds = grpc.ssl_server_credentials([(k.read(), cert.read())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self._set_health(name, health_pb2.HealthCheckResponse.SERVING)
        return self

    async def _set_health(self, name: str, status) -> None:
        result = self.health.set(name, status)
        if hasattr(result, "__await__"):
            await result

    async def begin_drain(self) -> None:
        """Report NOT_SERVING and refuse new synthesis calls (UNAVAILABLE); the ones in flight go on."""
        self.quota.closing = True
        for name in ("", SERVICE_NAME):
            await self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def drain(self, deadline_s: float = DRAIN_DEADLINE_S) -> None:
        """``begin_drain``, wait up to ``deadline_s`` for the synthesis calls in flight to finish, then stop."""
        if self.server is None:
            return
        await self.begin_drain()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        try:
            await asyncio.wait_for(self.quota.idle.wait(), deadline_s)
        except asyncio.TimeoutError:
            log.warning("drain: %d synthesis call(s) still running after %g s are cancelled", self.quota.used, deadline_s)
        # A handler that has returned may still have replies in flight to a slow reader: gRPC's grace lets them
        # go out (it returns as soon as they have) within what is left of the deadline.
        await self.stop(max(1.0, end - loop.time()))

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, let running requests finish for ``grace_s``, then stop."""
        if self.server is None:
            return
        for name in ("", SERVICE_NAME):
            await self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)
        self.service.close()
