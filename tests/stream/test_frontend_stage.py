"""A streaming front-end batched across streams by the engine: joins at any time, results equal offline."""

import threading
import time

import torch

from legato.asr.frontends import NemoMel, NemoMelConfig, WhisperMel
from legato.stream.engine import Engine
from legato.stream.frames import EndOfStream, FeatureChunk
from legato.stream.stages import FrontendStage, RechunkStage, ResampleStage
from legato.stream.testing import audio_chunks

CHUNK = 1600  # 100 ms at 16 kHz


def _features(frames):
    return torch.cat([f.features for f in frames if isinstance(f, FeatureChunk)])


def _run(frontend, clips, rates, start_delays_s):
    stage = FrontendStage(frontend, hop_samples=160, sample_rate=16000, capacity=8, max_batch=8)
    pipe = ResampleStage(16000) | RechunkStage(CHUNK) | stage
    outputs = {}
    with Engine(pipe, default_budget_s=0.5) as engine:

        def feed(name):
            time.sleep(start_delays_s[name])
            h = engine.open_stream(stream_id=name)
            for ch in audio_chunks(clips[name], rates[name], 700):
                h.push(ch)
            h.end()
            outputs[name] = h.results()

        threads = [threading.Thread(target=feed, args=(n,)) for n in clips]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        metrics = engine.metrics()["stages"]["frontend"]
    assert stage.pool.in_use == 0
    return outputs, metrics


def test_nemo_mel_streams_joining_at_different_times(speech_dir):
    from legato.stream.audio_io import read_audio

    names = ["en_LDC93S1.wav", "en_goforward.wav", "en_ljspeech_LJ002-0020.wav", "en_cards_002.wav"]
    clips, rates = {}, {}
    for n in names:
        clips[n], rates[n] = read_audio(str(speech_dir / n))
    frontend = NemoMel(NemoMelConfig(normalize="NA"))
    outputs, metrics = _run(frontend, clips, rates, dict(zip(names, [0.0, 0.05, 0.1, 0.0])))
    for n in names:
        assert isinstance(outputs[n][-1], EndOfStream)
        audio16, _ = read_audio(str(speech_dir / n), sample_rate=16000)
        offline = frontend(audio16[:, 0][None])[0]
        got = _features(outputs[n])
        assert [f.start_frame for f in outputs[n] if isinstance(f, FeatureChunk)][0] == 0
        torch.testing.assert_close(got, offline, atol=1e-4, rtol=1e-5)
    assert metrics["batch_size"]["max"] >= 2  # streams really shared steps


def test_whisper_mel_through_the_engine():
    g = torch.Generator().manual_seed(0)
    clips = {str(i): 0.1 * torch.randn(16000 + 997 * i, 1, generator=g) for i in range(3)}
    frontend = WhisperMel()
    outputs, _ = _run(frontend, clips, {k: 16000 for k in clips}, {k: 0.0 for k in clips})
    for k, x in clips.items():
        torch.testing.assert_close(_features(outputs[k]), frontend(x[:, 0][None])[0], atol=1e-5, rtol=1e-5)
