"""Client library for the live-transcription WebSocket server (docs/PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

import torch
from websockets.asyncio.client import connect

from legato.stream.audio_io import encode_pcm


async def stream_audio(
    url: str,
    audio: torch.Tensor,
    sample_rate: int,
    *,
    chunk_ms: int = 100,
    realtime: bool = False,
    interim_results: bool = True,
    encoding: str = "s16le",
    token: str | None = None,
    model: str | None = None,
    lookahead_ms: int | None = None,
    decoder: str | None = None,
) -> AsyncIterator[dict]:
    """Send (n, channels) float32 audio; yield every server message until ``end`` or ``error``."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(url, additional_headers=headers, max_size=None, compression=None) as ws:
        start = {"type": "start", "sample_rate": sample_rate, "encoding": encoding, "channels": audio.shape[1], "interim_results": interim_results}
        if model:
            start["model"] = model
        if lookahead_ms is not None:
            start["lookahead_ms"] = lookahead_ms
        if decoder:
            start["decoder"] = decoder
        await ws.send(json.dumps(start))
        step = max(1, sample_rate * chunk_ms // 1000)

        async def send() -> None:
            for i in range(0, audio.shape[0], step):
                await ws.send(encode_pcm(audio[i : i + step], encoding))
                if realtime:
                    await asyncio.sleep(chunk_ms / 1000)
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        try:
            async for raw in ws:
                msg = json.loads(raw)
                yield msg
                if msg["type"] in ("end", "error"):
                    break
        finally:
            sender.cancel()
