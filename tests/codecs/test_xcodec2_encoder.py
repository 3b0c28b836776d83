"""XCodec2's encoder against the xcodec2 package (tiny fixture by tests/fixtures/make_xcodec2_fixture.py): every
intermediate and the codes; code counts; bad reference audio; Llasa voices prompted zero-shot with a clip."""

import numpy as np
import pytest
import torch

from legato.codecs.xcodec2 import XCodec2Codec, XCodec2Error, load_xcodec2_decoder
from legato.codecs.xcodec2_encoder import SEMANTIC_LAYER, load_xcodec2_encoder

from conftest import FIXTURES

XC = FIXTURES / "xcodec2"
# ours vs the package (float32 both; the fbank in float64 as transformers'): max abs errors measured 9.5e-7,
# 1.6e-5, 3.3e-6, 2.1e-7, 1.5e-6, 5.5e-6 (peaks 8.5, 3.0, 0.81, 0.28, 0.46, 4.2); tolerances leave ~5x room
STAGES = [("features", "enc_input_features", 5e-6), ("semantic_hidden", "enc_semantic_hidden16", 1e-4),
          ("semantic", "enc_semantic_encoded", 2e-5), ("acoustic", "enc_acoustic", 1e-6), ("fc_prior", "enc_fc_prior", 1e-5),
          ("fsq_in", "enc_fsq_in", 3e-5)]
SPEECH_TOKENS = 256  # the tiny Llama's <|s_0|>..<|s_255|>


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
    assert len(enc.semantic_model.encoder.layers) == SEMANTIC_LAYER  # of the checkpoint's 17: the 17th is never built


@pytest.mark.parametrize("n", [320, 639, 640, 641, 16000, 24000, 24001])
def test_code_count_is_length_over_320_plus_one(fx, n):
    enc, z = fx
    assert len(enc.encode(torch.from_numpy(np.resize(z["input_wav"], n)))) == n // 320 + 1


@pytest.mark.parametrize("audio, message", [
    (torch.zeros(2, 800), "mono"), (torch.zeros(0), "too short"), (torch.zeros(319), "too short"),
    (torch.zeros(800, dtype=torch.int16), "float"), (torch.full((800,), float("nan")), "NaN"),
    (torch.tensor([0.0, float("inf")] * 400), "infinite")])
def test_bad_reference_audio_is_refused_clearly(fx, audio, message):
    enc, _ = fx
    with pytest.raises(XCodec2Error, match=message):
        enc.encode(audio)
    with pytest.raises(XCodec2Error, match=message):  # the codec hands the same checks on
        XCodec2Codec(load_xcodec2_decoder(XC / "xcodec2_tiny"), encoder=enc).encode(audio)


def test_a_codec_without_its_encoder_says_so(fx):
    codec = XCodec2Codec(load_xcodec2_decoder(XC / "xcodec2_tiny"))
    assert not codec.can_encode and XCodec2Codec(codec.decoder, encoder=fx[0]).can_encode
    with pytest.raises(XCodec2Error, match="without its encoder"):
        codec.encode(torch.zeros(800))


def test_a_checkpoint_without_encoder_weights_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(XC / "xcodec2_tiny" / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("semantic_model.")}, str(tmp_path / "model.safetensors"))
    with pytest.raises(XCodec2Error, match="no XCodec2 encoder weights"):
        load_xcodec2_encoder(tmp_path)
    with pytest.raises(XCodec2Error, match="no model.safetensors"):
        load_xcodec2_encoder(tmp_path / "nowhere")


def _voice(tmp_path, z, extra: str = ""):
    import soundfile

    from legato.tts.voices import load_voices

    clip = tmp_path / "ref.wav"
    soundfile.write(str(clip), z["input_wav"], 16000, subtype="FLOAT")
    (tmp_path / "voices.yaml").write_text(
        f"voices:\n  llasa:\n    model: llasa\n    checkpoint: {FIXTURES / 'llasa' / 'llama_tiny'}\n    codec: {XC / 'xcodec2_tiny'}\n"
        f"    seed: 5\n    date: 26 Jul 2024\n" + extra.replace("CLIP", str(clip)))
    voice = load_voices(tmp_path / "voices.yaml")[0]["llasa"]
    voice.cap_tokens = lambda text: 30  # the random tiny model never says END
    return voice


class _FoldedCodes:
    """The tiny Llama has 256 speech tokens, the tiny codec 65536 codes: fold the codes so that a prompt holds them."""

    def __init__(self, encoder):
        self.encoder, self.seen = encoder, []

    def encode(self, audio):
        self.seen.append(self.encoder.encode(audio))
        return [c % SPEECH_TOKENS for c in self.seen[-1]]


def test_llasa_request_with_reference_audio_is_prompted_zero_shot(tmp_path, fx):
    from legato.tts.llasa.prompt import SPEECH_START
    from legato.tts.voice import SynthesisRequest

    _, z = fx
    voice = _voice(tmp_path, z)
    assert voice.supports_reference and voice.ref_codes == []
    voice.codec.encoder = folded = _FoldedCodes(voice.codec.encoder)
    prompts, tok = [], voice.tokenizer
    real = tok.prompt_ids
    tok.prompt_ids = lambda *a: prompts.append(real(*a)) or prompts[-1]
    request = SynthesisRequest("Hello there.", reference_audio=torch.from_numpy(z["input_wav"][::2].copy()),
                               reference_rate=8000, reference_text="The prompt voice.")  # resampled to 16 kHz
    audio = torch.cat(list(voice.chunks(request)))
    assert audio.numel() > 0 and audio.numel() % 320 == 0
    assert len(folded.seen[0]) == 76
    ids = prompts[0]
    start = ids.index(tok.tokenizer.token_to_id(SPEECH_START))
    assert ids[start + 1:] == [tok.speech_offset + c % SPEECH_TOKENS for c in folded.seen[0]]  # one <|s_k|> per code
    assert tok.tokenizer.decode(ids[:start], skip_special_tokens=False).endswith(
        "<|TEXT_UNDERSTANDING_START|>The prompt voice. Hello there.<|TEXT_UNDERSTANDING_END|><|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llasa_bad_or_too_long_references_are_the_requests_fault(tmp_path, fx):
    from legato.tts.voice import SynthesisError, SynthesisRequest

    _, z = fx
    voice = _voice(tmp_path, z, "    max_tokens: 100\n")
    voice.codec.encoder = _FoldedCodes(voice.codec.encoder)
    clip = torch.from_numpy(z["input_wav"])
    with pytest.raises(SynthesisError, match="too short"):
        voice.synthesize(SynthesisRequest("Hi.", reference_audio=clip[:100], reference_rate=16000, reference_text="Hm."))
    with pytest.raises(SynthesisError, match="holds 100 per request"):  # 76 codes + the texts
        voice.synthesize(SynthesisRequest("Hi.", reference_audio=clip, reference_rate=16000, reference_text="A long clip."))


def test_llasa_default_clip_is_encoded_once_at_load(tmp_path, fx):
    from legato.tts.llasa.voice import LlasaVoice
    from legato.tts.voice import SynthesisError, SynthesisRequest

    enc, z = fx
    # from voices.yaml: the clip is encoded at load, and codes the tiny Llama has no token for are refused there
    with pytest.raises(SynthesisError, match="speech code 64991 has no token"):
        _voice(tmp_path, z, "    reference_audio: CLIP\n    reference_text: The prompt voice.\n")
    plain = _voice(tmp_path, z)
    folded = _FoldedCodes(enc)
    voice = LlasaVoice("zs", plain.llama, plain.tokenizer, XCodec2Codec(plain.codec.decoder, encoder=folded), seed=5,
                       ref_audio=torch.from_numpy(z["input_wav"]), ref_text="The prompt voice.")
    assert folded.seen == [z["codes"][0, 0].tolist()] and voice.ref_codes == [c % SPEECH_TOKENS for c in folded.seen[0]]
    voice.cap_tokens = lambda text: 30
    prompts, real = [], voice.tokenizer.prompt_ids
    voice.tokenizer.prompt_ids = lambda *a: prompts.append(a) or real(*a)
    assert voice.synthesize(SynthesisRequest("Hello there.")).numel() > 0
    assert prompts == [("Hello there.", "The prompt voice.", voice.ref_codes)] and len(folded.seen) == 1  # not again


@pytest.mark.parametrize("extra, message", [
    ("    reference_audio: CLIP\n", "go together"),
    ("    reference_text: Words.\n", "go together"),
    ("    codec_encoder: false\n    reference_audio: CLIP\n    reference_text: Words.\n", "needs the XCodec2 encoder")])
def test_llasa_voice_reference_settings_are_checked(tmp_path, fx, extra, message):
    from legato.tts.voice import SynthesisError

    with pytest.raises(SynthesisError, match=message):
        _voice(tmp_path, fx[1], extra)


def test_llasa_voice_without_the_encoder_takes_no_reference(tmp_path, fx):
    voice = _voice(tmp_path, fx[1], "    codec_encoder: false\n")
    assert voice.codec.encoder is None and not voice.supports_reference


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_every_stage_and_the_codes_match_the_package(fx):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    enc, z = load_xcodec2_encoder(XC / "xcodec2_tiny", "cuda"), fx[1]
    out = enc.stages(torch.from_numpy(z["input_wav"]).cuda())
    for ours, ref, tol in STAGES:
        torch.testing.assert_close(out[ours].cpu(), torch.from_numpy(z[ref]), rtol=0, atol=tol, msg=ours)
    assert out["codes"].tolist() == z["codes"][0, 0].tolist()
