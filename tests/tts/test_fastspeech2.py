"""FastSpeech 2 (ming024 checkpoints): parity with ming024's own code, symbols, config errors.

Fixtures: tests/fixtures/tts/fastspeech2/, made by tests/fixtures/make_fastspeech2_hifigan.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from legato.tts.fastspeech2.config import FastSpeech2Config, UnsupportedConfigError
from legato.tts.fastspeech2.loader import load_fastspeech2, read_config
from legato.tts.fastspeech2.model import regulate_length
from legato.tts.fastspeech2.symbols import (
    SYMBOLS,
    ids_to_text,
    phones_to_ids,
    text_to_ids,
)

from conftest import FIXTURES

FIX = FIXTURES / "tts" / "fastspeech2"
MODELS = ("lj_tiny", "multi_tiny")
# Fixture control sets (p, e, d) as passed to ming024. ming024 scales energy by p_control (its
# VarianceAdaptor passes p_control to the energy branch), so ours gets e_control = p_control.
CONTROLS = {"c1": (1.0, 1.0, 1.0), "c2": (0.75, 1.2, 1.3)}


@pytest.fixture(scope="module")
def ref():
    return np.load(FIX / "reference.npz")


@pytest.fixture(scope="module")
def models():
    return {name: load_fastspeech2(FIX / name / "100.pth.tar", FIX / name) for name in MODELS}


def _inputs(ref, cfg):
    speakers = torch.from_numpy(ref["speakers"]) if cfg.n_speakers else None
    return torch.from_numpy(ref["ids"]), torch.from_numpy(ref["src_lens"]), speakers


def _close(ours: torch.Tensor, theirs: np.ndarray, rel: float = 1e-4) -> None:
    theirs_t = torch.from_numpy(theirs)
    assert ours.shape == theirs_t.shape
    scale = max(theirs_t.abs().max().item(), 1e-6)
    assert (ours - theirs_t).abs().max().item() <= rel * scale


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("ctl", sorted(CONTROLS))
def test_parity_with_ming024(ref, models, name, ctl):
    model, cfg = models[name]
    p, _, d = CONTROLS[ctl]
    out = model(*_inputs(ref, cfg), d_control=d, p_control=p, e_control=p)
    key = f"{name}_{ctl}"
    assert out.mel_lengths.tolist() == ref[f"{key}_mel_lens"].tolist()
    assert torch.equal(out.duration, torch.from_numpy(ref[f"{key}_d_rounded"]))
    _close(out.log_duration, ref[f"{key}_log_d"])
    _close(out.pitch, ref[f"{key}_pitch"])
    _close(out.energy, ref[f"{key}_energy"])
    _close(out.mel, ref[f"{key}_mel"])
    _close(out.mel_postnet, ref[f"{key}_postnet"])
    mel, lengths = model.synthesize(*_inputs(ref, cfg), d_control=d, p_control=p, e_control=p)
    assert torch.equal(mel, out.mel_postnet) and torch.equal(lengths, out.mel_lengths)


def test_configs_cover_both_levels_and_quantizations(models):
    lj, multi = models["lj_tiny"][1], models["multi_tiny"][1]
    assert (lj.pitch_feature, lj.pitch_quantization, lj.n_speakers, lj.postnet_channels) == ("phoneme_level", "linear", 0, 32)
    assert (multi.energy_feature, multi.energy_quantization, multi.n_speakers, multi.postnet_layers) == ("frame_level", "log", 3, 4)
    assert multi.speaker_ids == {"spk_a": 0, "spk_b": 1, "spk_c": 2}


def test_energy_control_scales_energy_only(ref, models):
    model, cfg = models["lj_tiny"]
    base = model(*_inputs(ref, cfg))
    louder = model(*_inputs(ref, cfg), e_control=1.2)
    assert torch.allclose(louder.energy, base.energy * 1.2)
    assert torch.equal(louder.pitch, base.pitch) and torch.equal(louder.duration, base.duration)


def test_speaker_required_for_multi_speaker(ref, models):
    model, cfg = models["multi_tiny"]
    ids, lengths, _ = _inputs(ref, cfg)
    with pytest.raises(ValueError, match="speakers"):
        model(ids, lengths)


def test_length_regulator_repeats_and_pads():
    x = torch.arange(2 * 3, dtype=torch.float32).view(2, 3, 1)
    out, lengths = regulate_length(x, torch.tensor([[2, 0, 1], [0, 1, 0]]))
    assert lengths.tolist() == [3, 1]
    assert out[..., 0].tolist() == [[0.0, 0.0, 2.0], [4.0, 0.0, 0.0]]


def test_all_zero_durations_give_empty_mel(ref, models):
    model, cfg = models["lj_tiny"]
    mel, lengths = model.synthesize(*_inputs(ref, cfg), d_control=0.0)
    assert mel.shape == (2, 0, 80) and lengths.tolist() == [0, 0]


# -- symbols ------------------------------------------------------------------------------


def test_symbol_table_is_ming024s(ref):
    assert SYMBOLS == tuple(ref["symbols"].tolist())
    assert len(SYMBOLS) == 360


def test_text_to_ids_matches_text_to_sequence(ref):
    for i in range(5):
        text = str(ref[f"sym_text_{i}"])
        assert text_to_ids(text) == ref[f"sym_ids_{i}"].tolist(), text


def test_phones_to_ids_and_back():
    ids = phones_to_ids(["HH", "AH0", "L", "OW1", ",", "sp", "W", "ER1", "L", "D", "?"])
    assert ids == text_to_ids("{HH AH0 L OW1},{sp W ER1 L D}?")
    assert ids_to_text(ids) == "{HH AH0 L OW1},{sp W ER1 L D}?"


def test_unknown_phones_and_words_are_refused():
    with pytest.raises(ValueError, match="XX"):
        phones_to_ids(["HH", "XX"])
    with pytest.raises(ValueError, match="phones"):
        text_to_ids("hello {HH AH0}")


# -- config and loader errors ------------------------------------------------------------------


def _copy_config(tmp_path: Path, name: str = "lj_tiny") -> Path:
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    return dst


def _edit(path: Path, dotted: str, value) -> None:
    doc = yaml.safe_load(path.read_text())
    node = doc
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    "file,field,value,match",
    [
        ("preprocess.yaml", "preprocessing.pitch.feature", "word_level", "preprocessing.pitch.feature"),
        ("model.yaml", "variance_embedding.energy_quantization", "cubic", "energy_quantization"),
        ("model.yaml", "variance_embedding.pitch_quantization", "log", "positive stats.json pitch min"),
        ("model.yaml", "variance_predictor.kernel_size", 5, "variance_predictor.kernel_size"),
        ("preprocess.yaml", "preprocessing.mel.n_mel_channels", 64, "n_mel_channels"),
        ("model.yaml", "transformer.encoder_head", 3, "transformer.encoder_hidden"),
        ("model.yaml", "transformer.conv_kernel_size", [8, 1], "conv_kernel_size"),
        ("model.yaml", "multi_speaker", True, "speakers.json"),
    ],
)
def test_unsupported_config_names_the_field(tmp_path, file, field, value, match):
    d = _copy_config(tmp_path)
    _edit(d / file, field, value)
    with pytest.raises(UnsupportedConfigError, match=match):
        read_config(d)


def test_missing_field_and_missing_stats(tmp_path):
    d = _copy_config(tmp_path)
    doc = yaml.safe_load((d / "model.yaml").read_text())
    del doc["variance_embedding"]["n_bins"]
    (d / "model.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(UnsupportedConfigError, match="variance_embedding.n_bins"):
        read_config(d)
    (d / "stats.json").unlink()
    with pytest.raises(UnsupportedConfigError, match="stats.json"):
        read_config(d)


def test_stats_found_under_preprocessed_path(tmp_path):
    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir()
    for f in ("preprocess.yaml", "model.yaml"):
        shutil.copy(FIX / "multi_tiny" / f, cfg_dir / f)
    data = tmp_path / "preprocessed"
    data.mkdir()
    for f in ("stats.json", "speakers.json"):
        shutil.copy(FIX / "multi_tiny" / f, data / f)
    _edit(cfg_dir / "preprocess.yaml", "path.preprocessed_path", "../preprocessed")  # relative to config_dir
    assert read_config(cfg_dir).n_speakers == 3
    _edit(cfg_dir / "preprocess.yaml", "path.preprocessed_path", str(data))  # absolute
    assert read_config(cfg_dir).pitch_range == tuple(json.loads((data / "stats.json").read_text())["pitch"][:2])


def test_checkpoint_that_does_not_fit_the_yaml(tmp_path):
    d = _copy_config(tmp_path)
    _edit(d / "model.yaml", "transformer.conv_filter_size", 128)
    with pytest.raises(UnsupportedConfigError, match="does not fit"):
        load_fastspeech2(d / "100.pth.tar", d)
    ckpt = torch.load(FIX / "lj_tiny" / "100.pth.tar", weights_only=True)
    ckpt["model"]["encoder.src_word_emb.weight"] = ckpt["model"]["encoder.src_word_emb.weight"][:300]
    torch.save(ckpt, tmp_path / "bad.pth.tar")
    with pytest.raises(UnsupportedConfigError, match="symbol embeddings"):
        load_fastspeech2(tmp_path / "bad.pth.tar", FIX / "lj_tiny")


def test_config_defaults_are_ljspeech():
    cfg = FastSpeech2Config()
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.n_bins, cfg.n_symbols) == (4, 6, 256, 361)
    assert round(cfg.frame_ms, 2) == 11.61
