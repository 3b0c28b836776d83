"""gRPC front end of the TTS service (``legato.tts.v1.Synthesizer``), with health checking and reflection.

Limits: ``max_concurrent_rpcs`` (past it gRPC answers RESOURCE_EXHAUSTED),
message sizes, the text and reference-audio limits of ``tts_requests``.
Optional bearer-token auth (metadata ``authorization: Bearer TOKEN``; the
health service stays open for load balancers) and TLS from PEM files.
Deadlines and cancellations end the request's handler, which stops its
synthesis (``TtsService``).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from legato.server.tts_proto import load
from legato.server.tts_requests import TtsRequestError, encode_audio, parse_request
from legato.server.tts_service import TtsService
from legato.stream.errors import CapacityError

log = logging.getLogger("legato.grpc")
SERVICE_NAME = "legato.tts.v1.Synthesizer"
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
        self.token = token.encode()

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required: metadata 'authorization: Bearer TOKEN'")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):
        if details.method.startswith(f"/{HEALTH_SERVICE}/"):
            return await continuation(details)
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.removeprefix("Bearer ").encode(), self.token):
            return await continuation(details)
        return self._deny


def _servicer(service: TtsService):
    pb2, pb2_grpc = load()
    STATUS = {"INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT, "NOT_FOUND": grpc.StatusCode.NOT_FOUND}

    async def parse(request, context, streaming: bool):
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
        log.warning("request %s (voice %s) failed: %s", parsed.request_id, parsed.voice.name, exc)
        await context.abort(code, f"synthesis failed: {exc}")

    class Synthesizer(pb2_grpc.SynthesizerServicer):
        async def Synthesize(self, request, context):
            parsed = await parse(request, context, streaming=False)
            try:
                audio = await service.synthesize(parsed)
            except Exception as exc:
                await failed(context, parsed, exc)
            return pb2.SynthesizeResponse(
                audio=encode_audio(audio, parsed.encoding, parsed.sample_rate), sample_rate_hz=parsed.sample_rate,
                encoding=parsed.encoding, num_samples=audio.shape[0], request_id=parsed.request_id,
            )

        async def SynthesizeStream(self, request, context):
            parsed = await parse(request, context, streaming=True)
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
            yield pb2.AudioChunk(sample_offset=offset, sample_rate_hz=parsed.sample_rate, encoding=parsed.encoding, last=True, request_id=parsed.request_id)

        async def ListVoices(self, request, context):
            voices = [
                pb2.Voice(name=v.name, model=v.model, native_sample_rate_hz=v.sample_rate, supports_reference_audio=v.supports_reference, language=v.language)
                for v in service.voices.values()
            ]
            return pb2.ListVoicesResponse(voices=voices, default_voice=service.default_voice)

    return pb2, pb2_grpc, Synthesizer()


class TtsGrpcServer:
    def __init__(self, service: TtsService, config: GrpcConfig = GrpcConfig()):
        self.service, self.config = service, config
        self.server: grpc.aio.Server | None = None
        self.port = config.port
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()

    @property
    def target(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> "TtsGrpcServer":
        c = self.config
        pb2, pb2_grpc, servicer = _servicer(self.service)
        self.server = grpc.aio.server(
            interceptors=[_TokenAuth(c.auth_token)] if c.auth_token else None,
            maximum_concurrent_rpcs=c.max_concurrent_rpcs,
            options=[("grpc.max_receive_message_length", c.max_receive_bytes), ("grpc.max_send_message_length", c.max_send_bytes)],
        )
        pb2_grpc.add_SynthesizerServicer_to_server(servicer, self.server)
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

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, let running requests finish for ``grace_s``, then stop."""
        if self.server is None:
            return
        for name in ("", SERVICE_NAME):
            await self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)
        self.service.close()
