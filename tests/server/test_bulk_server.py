"""The WebSocket server over the bulk path (``legato serve --bulk``, server/bulk_engine.py) end to end on loopback:
several real clips at once give the offline decode's words; partials arrive; options the bulk path cannot honour,
a full server and a dropped client get their documented outcome while other streams go on."""

import asyncio
import json

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect

from conftest import FIXTURES
from legato.asr.fastconformer.recognizer import FastConformerRecognizer
from legato.asr.fastconformer.words import words_from_tokens
from legato.server.bulk_engine import BulkEngine
from legato.server.ws_server import ServerConfig, TranscriptionServer
from legato.stream.audio_io import read_audio

CLIPS = ["en_cards_001.wav", "en_goforward.wav", "en_one_two_three.wav"]


@pytest.fixture(scope="module")
def rec():
    return FastConformerRecognizer.from_nemo(FIXTURES / "nemo" / "ctc_tiny.nemo")


def _server(rec, capacity=8, decoder=None, **config):
    engine = BulkEngine(rec.name, rec, capacity=capacity, max_batch=64, decoder=decoder)
    return TranscriptionServer(engine, [rec.name], ServerConfig(port=0, **config))


def _pcm(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2")


def _offline_words(rec, audio: np.ndarray, decoder: str = "ctc") -> list[str]:
    """Offline decoding of what the server receives (the s16le samples)."""
    tokens, frames = rec.transcribe_tokens(torch.from_numpy(_pcm(audio) / np.float32(32768)), rec.lookaheads_ms[0], decoder)
    return [w.word for w in words_from_tokens(rec.tokenizer, tokens, frames, rec.frame_s)]


async def _stream(url, audio: np.ndarray, *, start_extra=None, chunk=1600, stop_after=None, pace_s=0.0):
    """Send s16le 16 kHz audio in ``chunk``-sample messages, then ``end``; return every server message."""
    out = []
    start = {"type": "start", "sample_rate": 16000, "endpointing": {"enabled": False}, **(start_extra or {})}
    async with connect(url) as ws:
        await ws.send(json.dumps(start))
        first = json.loads(await ws.recv())
        out.append(first)
        if first["type"] != "ready":
            return out
        pcm = _pcm(audio)
        for i in range(0, len(pcm), chunk):
            if stop_after is not None and i >= stop_after:
                return out  # the client goes away mid-stream
            await ws.send(pcm[i:i + chunk].tobytes())
            await asyncio.sleep(pace_s)
        await ws.send(json.dumps({"type": "end"}))
        async for raw in ws:
            out.append(json.loads(raw))
    return out


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def _clip(speech_dir, name):
    return read_audio(str(speech_dir / name), sample_rate=16000)[0][:, 0].numpy()


def test_clips_at_once_give_the_offline_words(rec, speech_dir):
    clips = [_clip(speech_dir, c) for c in CLIPS]

    async def main():
        server = await _server(rec).start()
        try:
            return await asyncio.gather(*(_stream(server.url, a, chunk=700 + 300 * i) for i, a in enumerate(clips)))
        finally:
            await server.drain()

    for audio, msgs in zip(clips, _run(main())):
        assert msgs[0]["type"] == "ready" and msgs[-1]["type"] == "end", msgs[-2:]
        finals = [m for m in msgs if m["type"] == "final"]
        assert [w["word"] for m in finals for w in m["words"]] == _offline_words(rec, audio)
        assert " ".join(m["text"] for m in finals).split() == _offline_words(rec, audio)
    assert any(m["type"] == "partial" for msgs in _run(main()) for m in msgs)


def test_endpointing_splits_finals_and_keeps_the_words(rec, speech_dir):
    audio = np.concatenate([_clip(speech_dir, "en_cards_001.wav"), np.zeros(16000, np.float32), _clip(speech_dir, "en_goforward.wav")])

    async def main():
        server = await _server(rec).start()
        try:
            return await _stream(server.url, audio, start_extra={"endpointing": {"enabled": True, "min_silence_ms": 300}})
        finally:
            await server.drain()

    msgs = _run(main())
    finals = [m for m in msgs if m["type"] == "final"]
    assert msgs[-1]["type"] == "end" and len(finals) >= 2
    starts = [m["start"] for m in finals]
    assert starts == sorted(starts)


@pytest.mark.parametrize("extra,code", [({"lookahead_ms": 12345}, "bad_request"), ({"decoder": "rnnt"}, "bad_request")])  # CTC-only model
def test_options_the_bulk_path_cannot_honour_are_refused(rec, speech_dir, extra, code):
    audio = _clip(speech_dir, "en_cards_001.wav")

    async def main():
        server = await _server(rec).start()
        try:
            good = asyncio.create_task(_stream(server.url, audio))
            bad = await _stream(server.url, audio[:1600], start_extra=extra)
            return bad, await good
        finally:
            await server.drain()

    bad, good = _run(main())
    assert bad[-1]["type"] == "error" and bad[-1]["code"] == code, bad
    assert good[-1]["type"] == "end"


def test_full_server_refuses_and_a_dropped_client_frees_its_slot(rec, speech_dir):
    audio = _clip(speech_dir, "en_cards_001.wav")

    async def main():
        server = await _server(rec, capacity=1).start()
        try:
            dropped = await _stream(server.url, audio, stop_after=8000)  # leaves mid-stream: its slot must come back
            for _ in range(100):
                if server.engine.bulk.in_use == 0:
                    break
                await asyncio.sleep(0.05)
            first = asyncio.create_task(_stream(server.url, audio, pace_s=0.05))
            await asyncio.sleep(0.3)
            refused = await _stream(server.url, audio[:1600])
            return dropped, refused, await first
        finally:
            await server.drain()

    dropped, refused, first = _run(main())
    assert dropped[0]["type"] == "ready"
    assert refused[-1]["type"] == "error" and refused[-1]["code"] == "capacity"
    assert first[-1]["type"] == "end" and [w["word"] for m in first if m["type"] == "final" for w in m["words"]] == _offline_words(rec, audio)


def test_serve_bulk_refuses_what_it_cannot_serve():
    import subprocess
    import sys

    for extra in (["--model", "whisper-tiny.en"], []):
        proc = subprocess.run([sys.executable, "-m", "legato.clients.cli", "serve", "--bulk", "--port", "0", *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "--bulk serves exactly one --model fastconformer:FILE.nemo" in proc.stdout


def test_a_hybrid_model_served_with_its_rnnt_decoder(speech_dir):
    """A hybrid model's default decoder (RNNT) through the bulk server: its words equal offline RNNT decoding; a
    stream asking for CTC is refused."""
    hybrid = FastConformerRecognizer.from_nemo(FIXTURES / "nemo" / "hybrid_tiny.nemo")
    audio = _clip(speech_dir, "en_cards_001.wav")

    async def main():
        server = await _server(hybrid).start()
        try:
            return await _stream(server.url, audio), await _stream(server.url, audio[:1600], start_extra={"decoder": "ctc"})
        finally:
            await server.drain()

    good, bad = _run(main())
    assert good[-1]["type"] == "end"
    assert [w["word"] for m in good if m["type"] == "final" for w in m["words"]] == _offline_words(hybrid, audio, "rnnt")
    assert bad[-1]["code"] == "bad_request"


def test_other_sample_rates_are_resampled_per_stream(rec, speech_dir):
    """A 44.1 kHz stereo-capable clip sent at its own rate: the words of offline decoding of the same s16le samples
    resampled to 16 kHz (legato's streaming resampler equals its offline form)."""
    from legato.stream.resample import Resampler

    audio, rate = read_audio(str(speech_dir / "en_one_two_three.wav"))  # mono, 44.1 kHz
    assert rate != 16000
    x = audio[:, 0].numpy()

    async def main():
        server = await _server(rec).start()
        try:
            return await _stream(server.url, x, start_extra={"sample_rate": rate}, chunk=4410)
        finally:
            await server.drain()

    msgs = _run(main())
    received = torch.from_numpy(_pcm(x) / np.float32(32768))[:, None]
    at16k = Resampler(rate, 16000)(received)[:, 0]
    tokens, frames = rec.transcribe_tokens(at16k, rec.lookaheads_ms[0], "ctc")
    want = [w.word for w in words_from_tokens(rec.tokenizer, tokens, frames, rec.frame_s)]
    assert msgs[-1]["type"] == "end" and want
    assert [w["word"] for m in msgs if m["type"] == "final" for w in m["words"]] == want


def test_churn_of_opens_ends_and_drops_leaks_no_slot(rec, speech_dir):
    """40 clients at once on 6 slots, in random patterns (short and long audio, odd message sizes, ending, leaving
    mid-stream, retrying when the server is full): every stream that ends gets its end and words, every refusal is
    `capacity`, and afterwards every slot is free again."""
    audio = _clip(speech_dir, "en_cards_001.wav")
    rng = np.random.default_rng(11)
    plans = [(int(rng.integers(1600, len(audio))), int(rng.integers(300, 5000)), bool(rng.random() < 0.3)) for _ in range(40)]

    async def client(url, length, chunk, leave):
        for _ in range(200):  # retry while the server is full
            msgs = await _stream(url, audio[:length], chunk=chunk, stop_after=length // 2 if leave else None, pace_s=0.002)
            if msgs[-1]["type"] != "error" or msgs[-1]["code"] != "capacity":
                return msgs
            await asyncio.sleep(0.02)
        return msgs

    async def main():
        server = await _server(rec, capacity=6).start()
        try:
            results = await asyncio.gather(*(client(server.url, *p) for p in plans))
            for _ in range(200):
                if server.engine.bulk.in_use == 0:
                    break
                await asyncio.sleep(0.02)
            return results, server.engine.bulk.in_use
        finally:
            await server.drain()

    results, in_use = _run(main())
    assert in_use == 0
    for (length, _, leave), msgs in zip(plans, results):
        assert msgs[0]["type"] == "ready", msgs
        if not leave:
            assert msgs[-1]["type"] == "end"
            assert [w["word"] for m in msgs if m["type"] == "final" for w in m["words"]] == _offline_words(rec, audio[:length])


def test_warm_up_leaves_nothing_open_and_the_stats_line_says_what_the_worker_did(rec, speech_dir):
    """``warm_up`` (the server's, before it listens) opens no stream for good and leaves a clean window; after two
    clips the stats line counts the streams' chunks, its steps and its latencies."""
    engine = BulkEngine(rec.name, rec, capacity=4, max_batch=64, stats_every_s=60)
    steps = []
    engine.warm_up(lambda done, total: steps.append((done, total)))
    assert steps[-1][0] == steps[-1][1] == len(steps)  # a progress step per batch size, and the graph capture
    assert engine.bulk.in_use == 0 and engine.stats_line().startswith("bulk: 0 streams, 0 chunks waiting, 0 pushes refused")

    async def go():
        server = await TranscriptionServer(engine, [rec.name], ServerConfig(port=0)).start()
        try:
            return await asyncio.gather(*(_stream(server.url, _clip(speech_dir, c)) for c in CLIPS[:2]))
        finally:
            await server.drain()

    outs = _run(go())
    assert all(o[-1]["type"] == "end" for o in outs)
    head, window, phases, *cpu = engine.stats_line().split("; ")
    assert head.startswith("bulk: 0 streams, 0 chunks waiting, ")  # pushes refused: unpaced clients meet a full queue
    rate = float(window.split(" chunks/s")[0].replace(",", ""))
    assert rate > 0 and "worker busy" in window and "chunk latency p50/p99/max" in window
    assert phases.startswith("per step take ") and phases.endswith(" ms")  # where the stepping thread's time went
    assert not cpu or cpu[0].startswith("cpu (of a core) ")  # Linux: each thread's CPU share
    assert engine.stats_line().split("; ")[1].startswith("idle")  # each line covers the time since the last


def test_serve_graph_rows_default_is_the_bulk_paths():
    """``legato serve --graph-rows`` defaults to the bulk path's own (the CLI does not import it: light --help)."""
    from legato.asr.fastconformer.bulk_graphs import MAX_GRAPH_ROWS
    from legato.clients import serve_cmd

    assert serve_cmd.BULK_GRAPH_ROWS == MAX_GRAPH_ROWS
