"""XCodec2's encoder against the xcodec2 package (tiny fixture by tests/fixtures/make_xcodec2_fixture.py): every
intermediate and the codes; code counts; bad reference audio; a Llasa voice prompted zero-shot with a clip."""

import numpy as np
import pytest
import torch

from legato.codecs.xcodec2 import XCodec2Codec, XCodec2Error, load_xcodec2_decoder
from legato.codecs.xcodec2_encoder import load_xcodec2_encoder

from conftest import FIXTURES

XC = FIXTURES / "xcodec2"
# ours vs the package: the fbank runs in float32 here, float64 there (features ~1e-3 of a scale of 8.5)
STAGES = [("features", "enc_input_features", 2e-3), ("semantic_hidden", "enc_semantic_hidden16", 2e-4),
          ("semantic", "enc_semantic_encoded", 1e-4), ("acoustic", "enc_acoustic", 1e-6), ("fc_prior", "enc_fc_prior", 1e-4),
          ("fsq_in", "enc_fsq_in", 1e-4)]


@pytest.fixture(scope="module")
def fx():
    return load_xcodec2_encoder(XC / "xcodec2_tiny"), np.load(XC / "xcodec2_reference.npz")


def test_every_stage_and_the_codes_match_the_package(fx):
    enc, z = fx
    out = enc.stages(torch.from_numpy(z["input_wav"]))
    for ours, ref, tol in STAGES:
        torch.testing.assert_close(out[ours], torch.from_numpy(z[ref]), rtol=0, atol=tol, msg=ours)
    assert out["codes"].tolist() == z["codes"][0, 0].tolist()  # all 76
    torch.testing.assert_close(enc.padded(torch.from_numpy(z["input_wav"])), torch.from_numpy(z["enc_acoustic_input"]))


@pytest.mark.parametrize("n", [320, 639, 640, 641, 16000, 24001])
def test_code_count_is_length_over_320_plus_one(fx, n):
    enc, z = fx
    assert len(enc.encode(torch.from_numpy(np.resize(z["input_wav"], n)))) == n // 320 + 1


def test_bad_reference_audio_is_refused_clearly(fx):
    enc, _ = fx
    codec = XCodec2Codec(load_xcodec2_decoder(XC / "xcodec2_tiny"), encoder=enc)
    with pytest.raises(XCodec2Error, match="mono"):
        codec.encode(torch.zeros(2, 800))
    with pytest.raises(XCodec2Error, match="too short"):
        codec.encode(torch.zeros(100))
    with pytest.raises(XCodec2Error, match="NaN"):
        codec.encode(torch.full((800,), float("nan")))
    with pytest.raises(XCodec2Error, match="without its encoder"):
        XCodec2Codec(codec.decoder).encode(torch.zeros(800))


def test_a_checkpoint_without_encoder_weights_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(XC / "xcodec2_tiny" / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("semantic_model.")}, str(tmp_path / "model.safetensors"))
    with pytest.raises(XCodec2Error, match="no XCodec2 encoder weights"):
        load_xcodec2_encoder(tmp_path)


def test_llasa_voice_prompts_zero_shot_from_a_reference_clip(tmp_path, fx):
    import soundfile

    from legato.tts.voice import SynthesisRequest
    from legato.tts.voices import load_voices

    enc, z = fx
    clip = tmp_path / "ref.wav"
    soundfile.write(str(clip), z["input_wav"], 16000, subtype="FLOAT")
    (tmp_path / "voices.yaml").write_text(
        f"voices:\n  llasa:\n    model: llasa\n    checkpoint: {FIXTURES / 'llasa' / 'llama_tiny'}\n    codec: {XC / 'xcodec2_tiny'}\n"
        f"    seed: 5\n    date: 26 Jul 2024\n    reference_audio: {clip}\n    reference_text: The prompt voice.\n")
    voices, _ = load_voices(tmp_path / "voices.yaml")
    voice = voices["llasa"]
    voice.cap_tokens = lambda text: 30  # the random tiny model never says END
    prompts = []
    real = voice.tokenizer.prompt_ids
    voice.tokenizer.prompt_ids = lambda *a: prompts.append(a) or real(*a)
    audio = torch.cat(list(voice.chunks(SynthesisRequest("Hello there."))))
    assert prompts[0] == ("Hello there.", "The prompt voice.", z["codes"][0, 0].tolist())  # the voice's default clip
    assert audio.numel() > 0 and audio.numel() % 320 == 0
    # a request's own clip (at another rate) replaces the default one
    request = SynthesisRequest("Hi.", reference_audio=torch.from_numpy(z["input_wav"][::2].copy()), reference_rate=8000,
                               reference_text="Another voice.")
    assert torch.cat(list(voice.chunks(request))).numel() > 0
    assert prompts[1][1] == "Another voice." and len(prompts[1][2]) == 76
