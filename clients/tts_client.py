"""Client library for the gRPC TTS service (``legato.tts.v1``, docs/TTS.md)."""

from __future__ import annotations

from typing import AsyncIterator

import grpc
import numpy as np

from legato.server.tts_proto import load


def channel(target: str, *, tls: bool = False, root_cert: bytes | None = None) -> grpc.aio.Channel:
    if tls:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_cert))
    return grpc.aio.insecure_channel(target)


async def synthesize_stream(
    ch: grpc.aio.Channel,
    text: str,
    *,
    voice: str = "",
    sample_rate: int = 0,
    speed: float = 1.0,
    reference_audio: bytes = b"",
    reference_text: str = "",
    token: str | None = None,
    timeout_s: float | None = None,
) -> AsyncIterator[tuple[int, np.ndarray, int]]:
    """Yield (sample offset, float32 samples, sample rate) as the server streams them."""
    pb2, pb2_grpc = load()
    request = pb2.SynthesizeRequest(
        text=text, voice=voice, sample_rate_hz=sample_rate, encoding=pb2.PCM_F32LE, speed=speed,
        reference_audio=reference_audio, reference_text=reference_text,
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async for chunk in pb2_grpc.SynthesizerStub(ch).SynthesizeStream(request, metadata=metadata, timeout=timeout_s):
        yield chunk.sample_offset, np.frombuffer(chunk.audio, "<f4"), chunk.sample_rate_hz


async def list_voices(ch: grpc.aio.Channel, token: str | None = None):
    pb2, pb2_grpc = load()
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return await pb2_grpc.SynthesizerStub(ch).ListVoices(pb2.ListVoicesRequest(), metadata=metadata)
