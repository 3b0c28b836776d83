"""FastConformer served by the engine: many streams batched, per-stream lookahead and decoder, endpointing."""

import threading

import numpy as np
import pytest
import torch

from legato.asr.fastconformer.recognizer import BadStreamOption, FastConformerRecognizer
from legato.server.models import engine_for, load_recognizer
from legato.stream.frames import TextEvent, TextKind
from legato.stream.testing import audio_chunks

from conftest import FIXTURES

NEMO = FIXTURES / "nemo"


@pytest.fixture(scope="module")
def clips():
    z = np.load(NEMO / "models_tiny.npz")
    return [torch.from_numpy(z["wave"][b, : z["wave_len"][b]]).float() for b in range(2)]


@pytest.fixture(scope="module")
def hybrid():
    return FastConformerRecognizer.from_nemo(NEMO / "hybrid_tiny.nemo")


def _serve(rec, streams: dict[str, tuple[torch.Tensor, int, int, dict]]) -> dict[str, list]:
    """streams: id -> (16 kHz audio, sample rate to send at, chunk samples, options). Fed concurrently."""
    import librosa

    engine = engine_for(rec, max_streams=8, max_batch=8)
    results: dict[str, list] = {}
    with engine:
        handles = {sid: engine.open_stream(options=opts, stream_id=sid) for sid, (_, _, _, opts) in streams.items()}

        def feed(sid):
            audio, rate, chunk, _ = streams[sid]
            if rate != 16000:
                audio = torch.from_numpy(librosa.resample(audio.numpy(), orig_sr=16000, target_sr=rate))
            for frame in audio_chunks(audio, rate, chunk):
                handles[sid].push(frame, timeout=30)
            handles[sid].end(timeout=30)

        threads = [threading.Thread(target=feed, args=(sid,)) for sid in streams]
        for t in threads:
            t.start()
        for sid, h in handles.items():
            results[sid] = [f for f in h.results(timeout=60) if isinstance(f, TextEvent)]
        for t in threads:
            t.join()
    return results


def _finals(events) -> str:
    return " ".join(e.text for e in events if e.kind is TextKind.FINAL)


def test_engine_streams_equal_offline_per_lookahead_and_decoder(hybrid, clips):
    no_ep = {"endpointing": {"enabled": False}}
    streams = {
        "a": (clips[0], 16000, 1000, {**no_ep}),
        "b": (clips[1], 16000, 333, {**no_ep, "lookahead_ms": 0}),
        "c": (clips[0], 16000, 4096, {**no_ep, "lookahead_ms": 80, "decoder": "ctc"}),
        "d": (clips[1], 16000, 160, {**no_ep, "decoder": "ctc"}),
    }
    out = _serve(hybrid, streams)
    for sid, (audio, _, _, opts) in streams.items():
        want = " ".join(s.text.strip() for s in hybrid.transcribe(audio, opts.get("lookahead_ms"), opts.get("decoder")))
        finals = [e for e in out[sid] if e.kind is TextKind.FINAL]
        assert len(finals) == 1 and finals[0].text == want, sid
        assert finals[0].words and finals[0].words[0].start_s >= 0 and finals[0].end_s <= audio.shape[0] / 16000 + 0.2
        partials = [e for e in out[sid] if e.kind is TextKind.PARTIAL]
        assert partials and all(want.startswith(p.text.rsplit(" ", 1)[0]) for p in partials), sid


def test_resampled_input_and_endpointing_keep_every_word(hybrid, clips):
    """48 kHz in; with endpointing the text arrives as several finals that spell the one long final
    (an endpoint between word pieces splits a word: compare without spaces)."""
    out = _serve(hybrid, {
        "ep": (clips[0], 48000, 4800, {"endpointing": {"enabled": True, "min_silence_ms": 80}, "decoder": "ctc"}),
        "whole": (clips[0], 48000, 4800, {"endpointing": False, "decoder": "ctc"}),
    })
    finals = [e for e in out["ep"] if e.kind is TextKind.FINAL]
    assert len(finals) >= 2
    assert "".join(e.text for e in finals).replace(" ", "") == _finals(out["whole"]).replace(" ", "")
    ends = [e.end_s for e in finals]
    assert ends == sorted(ends)


def test_bad_stream_options_are_refused(hybrid):
    engine = engine_for(hybrid, max_streams=2)
    with engine:
        with pytest.raises(BadStreamOption, match="lookahead_ms 123 is not one of this model's lookaheads: \\[240, 80, 0\\]"):
            engine.open_stream(options={"lookahead_ms": 123})
        with pytest.raises(BadStreamOption, match="decoder 'tdt'"):
            engine.open_stream(options={"decoder": "tdt"})
        h = engine.open_stream()  # the refused opens left no slot taken
        h.end()
        h.results(timeout=30)


def test_model_spec_loads_fastconformer(tmp_path):
    name, rec = load_recognizer(f"fastconformer:{NEMO / 'ctc_tiny.nemo'}")
    assert name == "fastconformer:ctc_tiny" and rec.lookaheads_ms == [240, 0]
    from legato.server.models import UnknownModelError

    with pytest.raises(UnknownModelError, match="no .nemo file"):
        load_recognizer(f"fastconformer:{tmp_path / 'nope.nemo'}")


def test_websocket_server_streams_fastconformer_with_lookahead(hybrid, clips):
    """Over the wire: per-session lookahead and decoder from the start message; a lookahead the model lacks is refused."""
    import asyncio
    import json

    from websockets.asyncio.client import connect

    from conftest import transcription_server
    from legato.clients.ws_client import stream_audio

    audio = clips[1][:, None]
    want = " ".join(s.text.strip() for s in hybrid.transcribe(clips[1], 0, "ctc"))

    async def main():
        server = await transcription_server(hybrid).start()
        try:
            msgs = [m async for m in stream_audio(server.url, audio, 16000, chunk_ms=100, lookahead_ms=0, decoder="ctc")]
            async with connect(server.url) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "lookahead_ms": 1040}))
                bad = json.loads(await ws.recv())
                await ws.wait_closed()
                code = ws.close_code
            return msgs, bad, code
        finally:
            await server.drain()

    msgs, bad, code = asyncio.run(asyncio.wait_for(main(), 120))
    assert msgs[0]["type"] == "ready" and msgs[0]["model"] == "fastconformer:hybrid_tiny" and msgs[-1]["type"] == "end"
    assert "".join(m["text"] for m in msgs if m["type"] == "final").replace(" ", "") == want.replace(" ", "")
    assert bad["type"] == "error" and bad["code"] == "bad_request" and "[240, 80, 0]" in bad["message"] and code == 1007


def test_cli_transcribe_fastconformer(tmp_path, clips, hybrid):
    import subprocess
    import sys

    import soundfile

    wav = tmp_path / "clip.wav"
    soundfile.write(wav, clips[0].numpy(), 16000)
    run = subprocess.run(
        [sys.executable, "-m", "legato.clients.cli", "transcribe", str(wav), "--model", f"fastconformer:{NEMO / 'hybrid_tiny.nemo'}",
         "--lookahead-ms", "80", "--decoder", "ctc"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    want = " ".join(s.text.strip() for s in hybrid.transcribe(clips[0], 80, "ctc"))
    assert " ".join(run.stdout.split()) == want
    bad = subprocess.run(
        [sys.executable, "-m", "legato.clients.cli", "transcribe", str(wav), "--model", f"fastconformer:{NEMO / 'hybrid_tiny.nemo'}", "--lookahead-ms", "7"],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "lookahead_ms 7 is not one of this model's lookaheads" in bad.stderr


def test_bf16_and_fp8_cache_settings_serve(monkeypatch, clips):
    """LEGATO_PRECISION / LEGATO_KV_CACHE (legato serve --precision / --kv-cache) reach the model and its state."""
    from legato.server.models import UnknownModelError

    monkeypatch.setenv("LEGATO_PRECISION", "bf16")
    monkeypatch.setenv("LEGATO_KV_CACHE", "fp8")
    _, rec = load_recognizer(f"fastconformer:{NEMO / 'hybrid_tiny.nemo'}")
    assert next(rec.model.parameters()).dtype == torch.bfloat16 and rec.model.encoder.kv_dtype == torch.float8_e4m3fn
    out = _serve(rec, {"a": (clips[0], 16000, 1000, {"endpointing": {"enabled": False}})})
    assert [e for e in out["a"] if e.kind is TextKind.FINAL]  # a bf16 model with an fp8 cache streams to its final
    monkeypatch.setenv("LEGATO_KV_CACHE", "fp4")
    with pytest.raises(UnknownModelError, match="LEGATO_KV_CACHE='fp4': use one of model, fp8"):
        load_recognizer(f"fastconformer:{NEMO / 'hybrid_tiny.nemo'}")
