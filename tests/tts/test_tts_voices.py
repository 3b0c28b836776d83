"""Real voices behind the service: the tiny FastSpeech 2 + HiFi-GAN fixture voice from a voices YAML,
streamed equal to whole-utterance synthesis, served by `legato serve --voices` and spoken by `legato say`."""

import asyncio
import os
import subprocess
import urllib.request
import sys

import numpy as np
import pytest
import soundfile
import torch

from legato.tts.fastspeech2.voice import FastSpeech2Voice, split_sentences
from legato.tts.voice import SynthesisRequest
from legato.tts.voices import VoiceConfigError, load_voices

from conftest import FIXTURES

FS2 = FIXTURES / "tts" / "fastspeech2"
TEXT = "Hello world. The world, hello!"


@pytest.fixture(scope="module")
def voices_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("voices") / "voices.yaml"
    path.write_text(
        f"""
voices:
  lj:
    model: fastspeech2
    checkpoint: {FS2 / 'lj_tiny' / '100.pth.tar'}
    config_dir: {FS2 / 'lj_tiny'}
    lexicon: {FIXTURES / 'tts' / 'text' / 'lexicon.txt'}
    vocoder: {{checkpoint: {FS2 / 'hifigan_v1_tiny' / 'generator.pth.tar'}, config: {FS2 / 'hifigan_v1_tiny' / 'config.json'}}}
"""
    )
    return path


def test_fastspeech2_voice_streams_what_whole_sentences_give(voices_yaml):
    voices, default = load_voices(voices_yaml)
    voice = voices[default]
    assert isinstance(voice, FastSpeech2Voice) and voice.sample_rate == 22050
    chunks = list(voice.chunks(SynthesisRequest(TEXT)))
    assert len(chunks) > 2
    want = []
    with torch.inference_mode():
        for sentence in split_sentences(TEXT.lower()):
            ids = torch.tensor([voice.phonemes(sentence)])
            mel, n = voice.acoustic.synthesize(ids, torch.tensor([ids.shape[1]]))
            want.append(voice.vocoder(mel[:, : int(n[0])].transpose(1, 2))[0])
    assert torch.allclose(torch.cat(chunks), torch.cat(want), atol=1e-5)
    slow = torch.cat(list(voice.chunks(SynthesisRequest(TEXT, speed=0.5))))
    assert slow.shape[0] > 1.5 * torch.cat(chunks).shape[0]


def test_voice_config_errors_are_clear(tmp_path):
    bad = tmp_path / "v.yaml"
    bad.write_text("voices:\n  x:\n    model: tacotron\n")
    with pytest.raises(VoiceConfigError, match="needs 'model' set to one of"):
        load_voices(bad)
    bad.write_text("voices:\n  x:\n    model: fastspeech2\n    checkpoint: nope.pth.tar\n    config_dir: .\n")
    with pytest.raises(VoiceConfigError, match="nope.pth.tar does not exist"):
        load_voices(bad)


def test_serve_and_say_end_to_end(voices_yaml, tmp_path):
    """`legato serve --voices` (ASR and TTS on one engine) answers Synthesize and SynthesizeStream and serves /healthz;
    `legato say` writes what it streamed."""
    import grpc

    from legato.server.tts_proto import load

    pb2, pb2_grpc = load()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "legato.clients.cli", "serve", "--voices", str(voices_yaml), "--grpc-port", "0", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        target = health = None
        for line in server.stdout:
            if "serving text-to-speech" in line:
                target = line.split(" on ", 1)[1].split(" ")[0]
            if "serving live transcription" in line:
                health = line.rsplit(" ", 1)[1].strip()
                break
        assert target and health, "server did not start"
        with urllib.request.urlopen(health, timeout=10) as r:
            assert r.status == 200

        async def calls():
            async with grpc.aio.insecure_channel(target) as ch:
                stub = pb2_grpc.SynthesizerStub(ch)
                whole = await stub.Synthesize(pb2.SynthesizeRequest(text=TEXT, encoding=pb2.PCM_F32LE))
                chunks = [c async for c in stub.SynthesizeStream(pb2.SynthesizeRequest(text=TEXT, encoding=pb2.PCM_F32LE))]
            return whole, chunks

        whole, chunks = asyncio.run(asyncio.wait_for(calls(), 60))
        streamed = np.frombuffer(b"".join(c.audio for c in chunks), "<f4")
        assert chunks[-1].last and whole.sample_rate_hz == 22050
        assert np.allclose(streamed, np.frombuffer(whole.audio, "<f4"), atol=1e-6)
        out = tmp_path / "say.wav"
        say = subprocess.run(
            [sys.executable, "-m", "legato.clients.cli", "say", TEXT, "--server", target, "-o", str(out)],
            capture_output=True, text=True, timeout=60,
        )
        assert say.returncode == 0, say.stderr
        wav, rate = soundfile.read(out, dtype="float32")
        assert rate == 22050 and wav.shape[0] == streamed.shape[0]
        local = tmp_path / "local.wav"
        here = subprocess.run(
            [sys.executable, "-m", "legato.clients.cli", "say", TEXT, "--voices", str(voices_yaml), "-o", str(local)],
            capture_output=True, text=True, timeout=60,
        )
        assert here.returncode == 0, here.stderr
        assert np.allclose(soundfile.read(local, dtype="float32")[0], wav, atol=1e-4)
    finally:
        server.terminate()
        server.wait(15)
