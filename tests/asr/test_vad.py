"""Silero VAD as a batched streaming module, and endpointing on real speech."""

import pytest
import torch

from legato.asr.silero_vad import FRAME_SAMPLES, Endpointer, SileroVad
from legato.stream.audio_io import read_audio
from legato.stream.module import random_splits, run_streaming

pytest.importorskip("silero_vad")


@pytest.fixture(scope="module")
def vad():
    return SileroVad()


def _speech_with_silence(speech_dir):
    clip = read_audio(str(speech_dir / "en_goforward.wav"), sample_rate=16000)[0][:, 0]
    silence = torch.zeros(16000)
    return torch.cat([silence, clip, silence, clip, silence])[None], clip.shape[0]


@pytest.mark.parametrize("split", [1, 160, 512, 1000, "random"])
def test_streaming_equals_offline(vad, speech_dir, split):
    audio, _ = _speech_with_silence(speech_dir)
    audio = audio[:, :40000]
    sizes = random_splits(audio.shape[1], torch.Generator().manual_seed(0), 3000) if split == "random" else split
    torch.testing.assert_close(run_streaming(vad, audio, sizes), vad(audio), atol=1e-6, rtol=0)


def test_batched_streams_match_solo(vad, speech_dir):
    audio, _ = _speech_with_silence(speech_dir)
    a, b = audio[:, :32000], audio[:, 16000:48000]
    torch.testing.assert_close(vad(torch.cat([a, b])), torch.cat([vad(a), vad(b)]), atol=1e-5, rtol=0)


def test_endpoints_after_each_utterance(vad, speech_dir):
    audio, n = _speech_with_silence(speech_dir)
    probs = vad(audio)[0].tolist()
    events = Endpointer(threshold=0.5, min_silence_ms=500).update(probs)
    assert events == ["start", "end", "start", "end"]
    # Speech is found where it is: the first start lies within the first clip.
    first = next(i for i, p in enumerate(probs) if p >= 0.5) * FRAME_SAMPLES / 16000
    assert 1.0 <= first <= 1.0 + n / 16000
