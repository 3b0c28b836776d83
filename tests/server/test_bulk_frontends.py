"""``legato serve --bulk --frontends 2``: WebSocket front ends in two processes around one engine process. Streams
(several at once, any sample rate) get the words offline decoding gives; a client that leaves mid-stream costs the
others nothing; SIGTERM drains and exits 0."""

import asyncio
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from legato.asr.fastconformer.recognizer import FastConformerRecognizer
from legato.asr.fastconformer.words import words_from_tokens
from legato.stream.audio_io import read_audio
from legato.stream.resample import Resampler
from test_bulk_server import _pcm, _stream

MODEL = FIXTURES / "nemo" / "ctc_tiny.nemo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected(rec, audio: np.ndarray, rate: int) -> list[str]:
    x = torch.from_numpy(_pcm(audio) / np.float32(32768))
    if rate != 16000:
        x = Resampler(rate, 16000)(x[:, None])[:, 0]
    tokens, frames = rec.transcribe_tokens(x, rec.lookaheads_ms[0], "ctc")
    return [w.word for w in words_from_tokens(rec.tokenizer, tokens, frames, rec.frame_s)]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "legato.clients.cli", "serve", "--bulk", "--frontends", "2", "--model",
                             f"fastconformer:{MODEL}", "--port", str(port), "--max-connections", "32"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = ""
    deadline = time.monotonic() + 180
    while "serving live transcription" not in line and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
    assert "2 front-end processes" in line, line
    yield proc, f"ws://127.0.0.1:{port}/"
    if proc.poll() is None:
        proc.kill()


def test_churn_over_two_front_ends(server, speech_dir):
    """24 clients with random lengths and message sizes, a third leaving mid-stream: the others get their words."""
    _, url = server
    rec = FastConformerRecognizer.from_nemo(MODEL)
    audio = read_audio(str(speech_dir / "en_cards_001.wav"), sample_rate=16000)[0][:, 0].numpy()
    rng = np.random.default_rng(5)
    plans = [(int(rng.integers(1600, len(audio))), int(rng.integers(300, 5000)), bool(rng.random() < 0.33)) for _ in range(24)]

    async def main():
        return await asyncio.gather(*(_stream(url, audio[:n], chunk=c, stop_after=n // 2 if leave else None, pace_s=0.002)
                                      for n, c, leave in plans))

    for (n, _, leave), msgs in zip(plans, asyncio.run(asyncio.wait_for(main(), 120))):
        assert msgs[0]["type"] == "ready", msgs
        if not leave:
            assert msgs[-1]["type"] == "end"
            assert [w["word"] for m in msgs if m["type"] == "final" for w in m["words"]] == _expected(rec, audio[:n], 16000)


def test_non_finite_audio_fails_only_its_stream(server, speech_dir):
    """f32le audio with a NaN: that client gets ``non_finite_audio``; a stream beside it gets its words."""
    import json

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosedError

    _, url = server
    rec = FastConformerRecognizer.from_nemo(MODEL)
    audio = read_audio(str(speech_dir / "en_goforward.wav"), sample_rate=16000)[0][:, 0].numpy()

    async def bad():
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "f32le"}))
            assert json.loads(await ws.recv())["type"] == "ready"
            x = np.zeros(8000, "<f4")
            x[100] = np.nan
            await ws.send(x.tobytes())
            got = []
            try:
                async for m in ws:
                    got.append(json.loads(m))
            except ConnectionClosedError as exc:  # closed with 1007 after the error message (docs/PROTOCOL.md)
                got.append({"closed": exc.rcvd.code})
            return got

    async def main():
        return await asyncio.gather(bad(), _stream(url, audio, pace_s=0.002))

    failed, good = asyncio.run(asyncio.wait_for(main(), 120))
    assert failed[-2]["type"] == "error" and failed[-2]["code"] == "non_finite_audio" and failed[-1] == {"closed": 1007}, failed
    assert [w["word"] for m in good if m["type"] == "final" for w in m["words"]] == _expected(rec, audio, 16000)


def test_a_scrape_on_any_front_end_sees_the_whole_server(server, speech_dir):
    """/metrics lands on either front end (the port is shared): each answers with the engine process's aggregate of
    both front ends' counters and the engine's own (streams, chunks stepped, their latency)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    _, url = server
    audio = read_audio(str(speech_dir / "en_cards_001.wav"), sample_rate=16000)[0][:, 0].numpy()

    async def clients():
        return await asyncio.gather(*(_stream(url, audio, chunk=1600) for _ in range(4)))

    asyncio.run(asyncio.wait_for(clients(), 60))
    time.sleep(2.5)  # the front ends' counters reach the engine each second
    http = url.replace("ws://", "http://").rstrip("/") + "/metrics"
    seen = []
    for _ in range(8):  # new connections: the kernel spreads them over both front ends
        with urllib.request.urlopen(http, timeout=10) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        value = lambda fam, name: next(s.value for s in families[fam].samples if s.name == name)  # noqa: E731
        seen.append((value("legato_messages", "legato_messages_total"), value("legato_latency_seconds", "legato_latency_seconds_count")))
    assert len(set(seen)) == 1 and seen[0][0] >= 4 * 3 and seen[0][1] > 0, seen  # the same whole-server numbers each time


def test_streams_over_two_front_ends_get_the_offline_words_and_sigterm_drains(server, speech_dir):
    proc, url = server
    rec = FastConformerRecognizer.from_nemo(MODEL)
    clips = []
    for name in ["en_cards_001.wav", "en_goforward.wav", "en_one_two_three.wav", "en_cards_002.wav", "en_cards_003.wav"]:
        audio, rate = read_audio(str(speech_dir / name))
        clips.append((audio[:, 0].numpy(), rate))

    async def main():
        dropped = asyncio.create_task(_stream(url, clips[0][0], stop_after=8000))  # leaves mid-stream
        runs = [_stream(url, a, start_extra={"sample_rate": r}, chunk=r // 10) for a, r in clips]
        return await asyncio.gather(*runs), await dropped

    results, dropped = asyncio.run(asyncio.wait_for(main(), 120))
    assert dropped[0]["type"] == "ready"
    for (audio, rate), msgs in zip(clips, results):
        assert msgs[0]["type"] == "ready" and msgs[-1]["type"] == "end", msgs[-2:]
        assert [w["word"] for m in msgs if m["type"] == "final" for w in m["words"]] == _expected(rec, audio, rate)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "legato: stopped" in out, out[-2000:]
