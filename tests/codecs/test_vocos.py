"""Vocos parity with vocos 0.1.0 on a tiny seeded checkpoint, the log-mel front-ends, and streaming == whole decode."""

import numpy as np
import pytest
import torch

from legato.codecs.vocos import (F5_LOG_FLOOR, LogMel, VocosConfig, VocosError, VocosStreamer, load_vocos,
                                 mel_filterbank)
from legato.stream.module import random_splits, run_streaming

from conftest import FIXTURES

F5 = FIXTURES / "tts" / "f5"
TINY = F5 / "vocos_tiny"


@pytest.fixture(scope="module")
def ref():
    data = np.load(F5 / "vocos_reference.npz")
    return {k: torch.from_numpy(data[k]) for k in data.files if k != "meta"}


@pytest.fixture(scope="module")
def vocos():
    return load_vocos(TINY / "config.yaml", TINY / "pytorch_model.bin")


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_config_and_filterbank_match_the_checkpoint(vocos):
    cfg = vocos.cfg
    assert (cfg.dim, cfg.intermediate_dim, cfg.num_layers, cfg.n_fft, cfg.hop) == (64, 128, 2, 1024, 256)
    fb = torch.load(TINY / "pytorch_model.bin", weights_only=True)["feature_extractor.mel_spec.mel_scale.fb"]
    assert torch.allclose(mel_filterbank(513, 100, 24000), fb, atol=1e-7)
    assert VocosConfig().lookahead_frames == 27  # the official 8-layer model


def test_decode_matches_vocos(vocos, ref):
    with torch.no_grad():
        wav = vocos.decode(ref["features"])
    assert wav.shape == ref["decoded"].shape == (2, 47 * 256)
    assert rel_err(wav, ref["decoded"]) < 1e-4


def test_mel_front_ends_match_vocos_and_f5(vocos, ref):
    assert rel_err(vocos.features(ref["wave"]), ref["features"]) < 1e-4
    f5_mel = LogMel(log_floor=F5_LOG_FLOOR)(ref["wave"])  # F5-TTS's reference-audio mel (floor 1e-5)
    assert rel_err(f5_mel, ref["f5_mel"]) < 1e-4


@pytest.mark.parametrize("chunks", [1, 2, 5, 8, 30, 1000, "random"])
def test_streaming_equals_whole_decode(vocos, ref, chunks):
    mel = ref["features"]
    streamer = VocosStreamer(vocos)
    if chunks == "random":
        chunks = random_splits(mel.shape[-1], torch.Generator().manual_seed(0), max_chunk=9)
    with torch.no_grad():
        whole = vocos.decode(mel)
    streamed = run_streaming(streamer, mel, chunks)
    assert streamed.shape == whole.shape
    assert float((streamed - whole).abs().max()) < 1e-5 * float(whole.abs().max()) + 1e-6


def test_streaming_short_inputs_and_warmed_up_output_size(vocos, ref):
    streamer = VocosStreamer(vocos)
    for frames in (1, 2, 3, 7):
        mel = ref["features"][:, :, :frames]
        with torch.no_grad():
            whole = vocos.decode(mel)
        assert torch.allclose(run_streaming(streamer, mel, 1), whole, atol=1e-6)
    state = streamer.init_state(2)
    mel = ref["features"]
    sizes = [streamer.step(mel[:, :, i : i + 1], state).shape[-1] for i in range(mel.shape[-1])]
    # nothing until the backbone's 3 x (layers + 1) frames and the ISTFT trim have passed; then one hop per frame
    assert sizes[: streamer.lookahead_frames] == [0] * streamer.lookahead_frames
    assert sizes[streamer.warmup_frames:] == [256] * (len(sizes) - streamer.warmup_frames)
    assert VocosConfig().lookahead_ms == pytest.approx(304.0)  # official model: (27 * 256 + 384) / 24 kHz


def test_reset_restarts_one_row(vocos, ref):
    streamer = VocosStreamer(vocos)
    mel = ref["features"]
    state = streamer.init_state(2)
    streamer.step(mel[:, :, :10], state)
    streamer.reset(state, torch.tensor([True, False]))
    assert int(state.frames_in[0]) == 0 and int(state.frames_in[1]) == 10
    assert float(state.overlap[0].abs().max()) == 0.0


def test_load_errors(tmp_path):
    bad = tmp_path / "config.yaml"
    resnet = (TINY / "config.yaml").read_text().replace("models.VocosBackbone", "models.VocosResNetBackbone")
    bad.write_text(resnet)
    with pytest.raises(VocosError, match="backbone"):
        load_vocos(bad, TINY / "pytorch_model.bin")
    with pytest.raises(VocosError, match="cannot read"):
        load_vocos(tmp_path / "missing.yaml", TINY / "pytorch_model.bin")
    (tmp_path / "w.bin").write_bytes(b"junk")
    with pytest.raises(VocosError, match="cannot read"):
        load_vocos(TINY / "config.yaml", tmp_path / "w.bin")
    torch.save({"encoder.weight": torch.zeros(1)}, tmp_path / "other.bin")
    with pytest.raises(VocosError, match="backbone"):
        load_vocos(TINY / "config.yaml", tmp_path / "other.bin")
    bigger = tmp_path / "big.yaml"
    bigger.write_text((TINY / "config.yaml").read_text().replace("num_layers: 2", "num_layers: 3"))
    with pytest.raises(VocosError, match="missing"):
        load_vocos(bigger, TINY / "pytorch_model.bin")
