"""Two-pass Paraformer: streaming partials, and at each VAD endpoint a final from the offline model over the
utterance; streams batch; an offline folder alone gives finals only."""

import threading

import pytest
import torch

from legato.asr.paraformer.recognizer import ParaformerRecognizer
from legato.asr.paraformer.two_pass import TwoPassStage
from legato.stream.audio_io import read_audio
from legato.stream.engine import Engine
from legato.stream.frames import EndOfStream, TextEvent, TextKind
from legato.stream.graph import Pipeline
from legato.stream.stages import RechunkStage, ResampleStage
from legato.stream.testing import audio_chunks

from conftest import FIXTURES

PARA = FIXTURES / "paraformer"
RATE = 16000


@pytest.fixture(scope="module")
def models():
    return ParaformerRecognizer.from_folder(PARA / "paraformer_tiny"), ParaformerRecognizer.from_folder(PARA / "paraformer_streaming_tiny")


@pytest.fixture(scope="module")
def two_utterances(speech_dir):
    a, _ = read_audio(str(speech_dir / "en_LDC93S1.wav"), sample_rate=RATE)
    a = a[:, 0]
    return torch.cat([torch.zeros(RATE // 2), a, torch.zeros(int(1.5 * RATE)), a, torch.zeros(RATE // 2)])


def run(stage, audio, streams=1, options=None):
    pipe = Pipeline([ResampleStage(RATE), RechunkStage(9600), stage])
    with Engine(pipe, default_budget_s=5.0) as engine:
        handles = [engine.open_stream(options=options) for _ in range(streams)]

        def feed(h):
            for ch in audio_chunks(audio, RATE, 1600):
                h.push(ch, timeout=30)
            h.end(timeout=30)

        threads = [threading.Thread(target=feed, args=(h,)) for h in handles]
        for t in threads:
            t.start()
        results = [h.results(timeout=120) for h in handles]
        for t in threads:
            t.join()
        return results, engine.metrics()["stages"][stage.name]["batch_size"]


def test_partials_stream_and_each_utterance_gets_the_offline_final(models, two_utterances):
    offline, online = models
    (frames, again), sizes = run(TwoPassStage(offline, online), two_utterances, streams=2)
    assert isinstance(frames[-1], EndOfStream)
    events = [f for f in frames if isinstance(f, TextEvent)]
    finals = [e for e in events if e.kind is TextKind.FINAL]
    assert len(finals) == 2  # one per utterance, cut at the 1.5 s pause
    assert finals[0].end_s < 4.5 < finals[1].start_s
    for e in finals:  # the offline model over exactly the utterance's audio
        seg = two_utterances[round(e.start_s * RATE) : round(e.end_s * RATE)]
        assert e.text == offline.text(offline.offline_ids(seg))
    partials = [e for e in events if e.kind is TextKind.PARTIAL]
    assert partials and all(p.start_s >= 0 for p in partials)
    assert any(p.start_s > finals[0].end_s for p in partials)  # the second utterance's partials are in stream time
    assert [(e.kind, e.text) for e in events] == [(e.kind, e.text) for e in again if isinstance(e, TextEvent)]
    assert sizes["max"] >= 2  # both streams in one step


def test_offline_folder_alone_gives_finals_only(models, two_utterances):
    offline, _ = models
    (frames,), _ = run(TwoPassStage(offline), two_utterances, options={"endpointing": {"min_silence_ms": 300}})
    kinds = [f.kind for f in frames if isinstance(f, TextEvent)]
    assert kinds == [TextKind.FINAL, TextKind.FINAL]


def test_a_streaming_folder_cannot_give_finals(models):
    _, online = models
    with pytest.raises(ValueError, match="needs an offline Paraformer"):
        TwoPassStage(online, online)


def test_two_pass_over_websocket_and_the_cli(two_utterances, tmp_path):
    """`paraformer-2pass:` served over WebSocket: partials, then one final per utterance, then end; and
    `legato transcribe --model paraformer:FOLDER` prints the same finals for an offline folder."""
    import asyncio
    import subprocess
    import sys

    import soundfile

    from conftest import transcription_server
    from legato.clients.ws_client import stream_audio
    from legato.server.models import load_recognizer

    spec = f"paraformer-2pass:{PARA / 'paraformer_streaming_tiny'},{PARA / 'paraformer_tiny'}"
    name, models = load_recognizer(spec)
    assert name == "paraformer-2pass:paraformer_streaming_tiny+paraformer_tiny"

    async def main():
        server = await transcription_server(models).start()
        try:
            return [m async for m in stream_audio(server.url, two_utterances[:, None], RATE, chunk_ms=100)]
        finally:
            await server.drain()

    messages = asyncio.run(asyncio.wait_for(main(), 120))
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "ready" and kinds[-1] == "end" and "partial" in kinds and kinds.count("final") == 2
    path = tmp_path / "two.wav"
    soundfile.write(path, two_utterances.numpy(), RATE)
    cli = subprocess.run([sys.executable, "-m", "legato.clients.cli", "transcribe", str(path), "--model", spec],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.split("\n")[:2] == [m["text"] for m in messages if m["type"] == "final"]
