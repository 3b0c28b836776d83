"""``GET /metrics`` (server/prometheus.py): scraped after real streams, parsed with Prometheus' own parser."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import transcription_server
from legato.clients.ws_client import stream_audio
from legato.stream.audio_io import read_audio


def _scrape(url: str, token: str | None = None) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, name: str, **labels) -> float:
    return next(s.value for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_after_streams_refusals_and_errors(recognizer, speech_dir):
    audio, rate = read_audio(str(speech_dir / "en_LDC93S1.wav"), mono=False)

    async def main():
        server = await transcription_server(recognizer, max_connections=2).start()
        url = server.http_url + "/metrics"
        try:
            before = await asyncio.to_thread(_scrape, url)
            messages = [m async for m in stream_audio(server.url, audio, rate, chunk_ms=100)]
            bad = [m async for m in stream_audio(server.url, audio[:1600], rate, model="no-such-model")]
            after = await asyncio.to_thread(_scrape, url)
            return before, messages, bad, after
        finally:
            await server.drain()

    before, messages, bad, after = asyncio.run(asyncio.wait_for(main(), 120))
    assert messages[-1]["type"] == "end" and bad[-1]["code"] == "unknown_model"
    route = recognizer.name
    assert _value(before["legato_open_streams"], "legato_open_streams", route=route) == 0
    assert _value(after["legato_errors"], "legato_errors_total", code="unknown_model") == 1
    assert _value(after["legato_messages"], "legato_messages_total") > 25  # 2.9 s in 100 ms messages, start, end
    first_stage = next(s.labels["stage"] for s in after["legato_stage_frames_in"].samples)
    assert _value(after["legato_stage_frames_in"], "legato_stage_frames_in_total", stage=first_stage) > 0
    step = after["legato_stage_step_seconds"]
    assert _value(step, "legato_stage_step_seconds_count", stage=first_stage) > 0
    assert _value(step, "legato_stage_step_seconds_bucket", stage=first_stage, le="+Inf") == _value(
        step, "legato_stage_step_seconds_count", stage=first_stage)
    latency = after["legato_latency_seconds"]
    assert _value(latency, "legato_latency_seconds_count", route=route) > 0
    assert {"legato_stage_queue_frames", "legato_stage_batch_size", "legato_stage_queue_wait_seconds", "legato_refused"} <= set(after)


def test_metrics_count_refusals_and_need_the_token(recognizer):
    async def main():
        server = await transcription_server(recognizer, auth_token="s3cret-token").start()
        url = server.http_url + "/metrics"
        try:
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(_scrape, url)
            return refused.value.code, await asyncio.to_thread(_scrape, url, "s3cret-token")
        finally:
            await server.drain()

    status, metrics = asyncio.run(asyncio.wait_for(main(), 60))
    assert status == 401 and _value(metrics["legato_refused"], "legato_refused_total", reason="unauthorized") == 1
