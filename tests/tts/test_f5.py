"""F5-TTS parity with f5-tts 1.1.22 on a tiny seeded checkpoint (tests/fixtures/make_f5_vocos.py made it)."""

import json

import numpy as np
import pytest
import torch

from legato.tts.f5.config import F5Config
from legato.tts.f5.duration import max_chunk_bytes, prompt_text, total_frames
from legato.tts.f5.loader import F5CheckpointError, KEY_TABLE, load_f5, map_key
from legato.tts.f5.sampling import initial_noise, sample, time_grid
from legato.tts.f5.vocab import Vocab, VocabError

from conftest import FIXTURES

F5 = FIXTURES / "tts" / "f5"
TINY = F5 / "f5_tiny"


@pytest.fixture(scope="module")
def ref():
    data = np.load(F5 / "f5_reference.npz")
    out = {k: torch.from_numpy(data[k]) for k in data.files if k != "meta"}
    out["meta"] = json.loads(str(data["meta"]))
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model, vocab = load_f5(TINY / "model_tiny.safetensors", TINY / "vocab.txt", F5Config(heads=2, dim_head=32))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b).abs().max() / b.abs().max())


def test_loads_both_layouts_to_the_same_weights(model):
    pt, vocab = load_f5(TINY / "model_tiny.pt", TINY / "vocab.txt", F5Config(heads=2, dim_head=32))
    assert pt.cfg == model.cfg
    assert pt.cfg.dim == 64 and pt.cfg.depth == 2 and pt.cfg.text_dim == 32 and pt.cfg.conv_layers == 2
    assert pt.cfg.text_num_embeds == len(vocab) == 27 and pt.cfg.ff_mult == 2
    for (k, a), (_, b) in zip(pt.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    assert vocab.encode(list("hi zo")) == [13, 14, 0, 0, 19]
    assert vocab.batch([list("ab"), list("c")]).tolist() == [[6, 7], [8, -1]]


def test_every_official_key_maps_through_the_table():
    keys = [line.split("\t")[0] for line in (TINY / "state_dict.txt").read_text().splitlines()]
    mapped = {k: map_key(k.removeprefix("ema_model.")) for k in keys if k.startswith("ema_model.")}
    assert mapped["ema_model.transformer.rotary_embed.inv_freq"] is None
    assert mapped["ema_model.transformer.transformer_blocks.1.ff.ff.0.0.bias"] == "blocks.1.ff.fc1.bias"
    assert len(KEY_TABLE) >= 15
    with pytest.raises(KeyError):
        map_key("transformer.something_new.weight")


@pytest.mark.parametrize("name, kwargs", [
    ("out", {}),
    ("out_drop_audio", {"drop_audio_cond": True}),
    ("out_drop_both", {"drop_audio_cond": True, "drop_text": True}),
])
def test_dit_forward_matches_f5_tts(model, ref, name, kwargs):
    out = model(ref["fwd/x"], ref["fwd/cond"], ref["fwd/text"], ref["fwd/time"], mask=ref["fwd/mask"], **kwargs)
    assert rel_err(out, ref[f"fwd/{name}"]) < 1e-4


def test_dit_forward_without_mask_and_cfg_rows(model, ref):
    out = model(ref["fwd/x"], ref["fwd/cond"], ref["fwd/text"], ref["fwd/time"])
    assert rel_err(out, ref["fwd/out_nomask"]) < 1e-4
    cfg = ref["fwd/out_cfg"]  # F5-TTS's packed CFG forward: conditional rows, then (no audio, no text) rows
    assert rel_err(cfg[:2], ref["fwd/out"]) < 1e-4 and rel_err(cfg[2:], ref["fwd/out_drop_both"]) < 1e-4


def test_v0_flags_rotary_on_one_head_and_no_text_padding_mask(ref):
    v0, _ = load_f5(TINY / "model_tiny.pt", TINY / "vocab.txt",
                    F5Config(heads=2, dim_head=32, text_mask_padding=False, pe_attn_head=1))
    out = v0(ref["fwd/x"], ref["fwd/cond"], ref["fwd/text"], ref["fwd/time"], mask=ref["fwd/mask"])
    assert rel_err(out, ref["fwd/out_v0_flags"]) < 1e-4


@pytest.mark.parametrize("tag, steps, schedule", [("uniform8", 8, "uniform"), ("epss7", 7, "epss")])
def test_full_sample_matches_cfm_sample(model, ref, tag, steps, schedule):
    grid = time_grid(steps, schedule, -1.0)
    assert torch.allclose(grid, ref[f"sample/{tag}/t"], atol=1e-7)
    y0 = ref[f"sample/{tag}/y0"]
    # seed= reproduces the noise F5-TTS drew (reseeded per row, zero padded)
    assert torch.equal(initial_noise(ref["sample/duration"], 100, seed=1234), y0)
    out = sample(model, ref["sample/cond"], ref["sample/text"], ref["sample/duration"], cond_lens=ref["sample/lens"],
                 steps=steps, cfg_strength=2.0, sway_coef=-1.0, noise=y0, schedule=schedule)
    assert out.shape == (2, 56, 100)
    assert rel_err(out, ref[f"sample/{tag}/out"]) < 1e-3


def test_single_row_sample_with_seed(model, ref):
    out = sample(model, ref["sample/cond"][:1], ref["sample/text"][:1, :13], 50, steps=6, cfg_strength=2.0,
                 sway_coef=-1.0, seed=7)
    assert rel_err(out, ref["sample/single/out"]) < 1e-3


def test_duration_rule_matches_infer_batch_process(ref):
    for case in ref["meta"]["durations"]:
        got = total_frames(case["ref_samples"], case["ref_text"], case["gen_text"], case["speed"])
        assert got == case["duration"], case
        if case["ref_text"].isascii():  # the model reads the reference text (space rule applied), then the new text
            assert "".join(case["text"]) == prompt_text(case["ref_text"]) + case["gen_text"]
    assert max_chunk_bytes(24000 * 5, "x" * 100) == int(100 / 5 * 17)


def test_config_from_official_yaml(tmp_path):
    (tmp_path / "F5TTS_v1_Base.yaml").write_text(
        "model:\n  name: F5TTS_v1_Base\n  tokenizer: pinyin\n  backbone: DiT\n  arch:\n    dim: 1024\n    depth: 22\n"
        "    heads: 16\n    ff_mult: 2\n    text_dim: 512\n    text_mask_padding: True\n    qk_norm: null\n"
        "    conv_layers: 4\n    pe_attn_head: null\n    attn_backend: torch\n    attn_mask_enabled: False\n"
        "    checkpoint_activations: False\n  mel_spec:\n    target_sample_rate: 24000\n    n_mel_channels: 100\n"
        "    hop_length: 256\n    win_length: 1024\n    n_fft: 1024\n    mel_spec_type: vocos\n")
    assert F5Config.from_yaml(tmp_path / "F5TTS_v1_Base.yaml") == F5Config()
    (tmp_path / "bad.yaml").write_text("model:\n  backbone: UNetT\n  arch: {dim: 1}\n")
    with pytest.raises(ValueError, match="not DiT"):
        F5Config.from_yaml(tmp_path / "bad.yaml")


def test_loader_errors_are_clear(tmp_path):
    vocab = TINY / "vocab.txt"
    with pytest.raises(F5CheckpointError, match="unknown checkpoint type"):
        load_f5(tmp_path / "model.bin", vocab)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(F5CheckpointError, match="cannot read"):
        load_f5(tmp_path / "junk.pt", vocab)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(F5CheckpointError, match="ema_model_state_dict"):
        load_f5(tmp_path / "other.pt", vocab)
    torch.save({"model_state_dict": {"encoder.w": torch.zeros(1)}}, tmp_path / "notf5.pt")
    with pytest.raises(F5CheckpointError, match="transformer"):
        load_f5(tmp_path / "notf5.pt", vocab)
    state = torch.load(TINY / "model_tiny.pt", weights_only=True)["ema_model_state_dict"]
    torch.save({"ema_model_state_dict": {**state, "ema_model.transformer.extra.weight": torch.zeros(1)}},
               tmp_path / "extra.pt")
    with pytest.raises(F5CheckpointError, match="does not know"):
        load_f5(tmp_path / "extra.pt", vocab)
    (tmp_path / "short_vocab.txt").write_text(" \na\n")
    with pytest.raises(F5CheckpointError, match="symbols"):
        load_f5(TINY / "model_tiny.pt", tmp_path / "short_vocab.txt", F5Config(heads=2, dim_head=32))
    (tmp_path / "nospace.txt").write_text("a\n b\n")
    with pytest.raises(VocabError, match="space"):
        Vocab.from_file(tmp_path / "nospace.txt")
    with pytest.raises(F5CheckpointError, match="inv_freq"):  # wrong head split: the rotary buffer disagrees
        load_f5(TINY / "model_tiny.pt", vocab, F5Config(heads=4, dim_head=16))
