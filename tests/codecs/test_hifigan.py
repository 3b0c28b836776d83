"""HiFi-GAN generator: parity with the reference, weight-norm folding, streaming equals whole.

Fixtures: tests/fixtures/tts/fastspeech2/hifigan_{v1,v3}_tiny, made by
tests/fixtures/make_fastspeech2_hifigan.py (ming024's hifigan/models.py for resblock "1",
jik876/hifi-gan's models.py for resblock "2").
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from legato.codecs.hifigan import (
    HifiGanConfig,
    HifiGanConfigError,
    HifiGanStreamer,
    fold_weight_norm,
    load_hifigan,
)
from torch.nn.utils import weight_norm
from conftest import FIXTURES  # noqa: E402

FIX = FIXTURES / "tts" / "fastspeech2"
VERSIONS = ("v1", "v3")


@pytest.fixture(scope="module")
def ref():
    return np.load(FIX / "reference.npz")


@pytest.fixture(scope="module")
def generators():
    return {v: load_hifigan(FIX / f"hifigan_{v}_tiny" / "generator.pth.tar", FIX / f"hifigan_{v}_tiny" / "config.json") for v in VERSIONS}


@pytest.mark.parametrize("version", VERSIONS)
def test_parity_with_reference(ref, generators, version):
    wav = generators[version](torch.from_numpy(ref["hifigan_mel"]))
    expected = torch.from_numpy(ref[f"hifigan_{version}_wav"])
    assert wav.shape == expected.shape == (2, 40 * 256)
    assert (wav - expected).abs().max().item() < 1e-4


def test_checkpoints_are_weight_normed():
    state = torch.load(FIX / "hifigan_v1_tiny" / "generator.pth.tar", weights_only=True)["generator"]
    assert "conv_pre.weight_g" in state and "ups.0.weight_v" in state and "conv_pre.weight" not in state


@pytest.mark.parametrize("conv", [torch.nn.Conv1d(4, 6, 3), torch.nn.ConvTranspose1d(6, 3, 8, 4)])
@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
def test_fold_weight_norm_equals_remove_weight_norm(conv):
    torch.manual_seed(0)
    m = weight_norm(conv)
    with torch.no_grad():
        m.weight_g.uniform_(0.5, 2.0)
    folded = fold_weight_norm({k: v.detach() for k, v in m.state_dict().items()})
    torch.nn.utils.remove_weight_norm(m)
    assert torch.allclose(folded["weight"], m.weight.detach(), atol=1e-6)
    assert set(folded) == {"weight", "bias"}


def _run_stream(model, mel, sizes):
    streamer = HifiGanStreamer(model)
    outs, start = [], 0
    for n in sizes:
        outs.append(streamer.push(mel[:, :, start : start + n]))
        start += n
        assert streamer.pending_frames <= streamer.right
    outs.append(streamer.flush())
    return torch.cat(outs, dim=1)


def _splits(total, rng):
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(1, 12)))
    sizes[-1] -= sum(sizes) - total
    return [s for s in sizes if s > 0]


@pytest.mark.parametrize("version", VERSIONS)
def test_streaming_equals_whole(generators, version):
    model = generators[version]
    n = 41  # > 37 + lookahead, not a multiple of 3, 8 or 37
    mel = torch.randn(2, 80, n, generator=torch.Generator().manual_seed(1)) * 2 - 5
    whole = model(mel)
    for chunk in (1, 3, 8, 37):
        sizes = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
        assert (_run_stream(model, mel, sizes) - whole).abs().max().item() < 1e-5, chunk
    rng = np.random.default_rng(0)
    for _ in range(2):
        assert (_run_stream(model, mel, _splits(n, rng)) - whole).abs().max().item() < 1e-5


def test_streamer_holds_back_exactly_the_lookahead(generators):
    model = generators["v1"]
    streamer = HifiGanStreamer(model)
    right = model.cfg.mel_context[1]
    mel = torch.randn(1, 80, right + 2)
    assert streamer.push(mel[:, :, :right]).shape == (1, 0)
    assert streamer.push(mel[:, :, right:]).shape == (1, 2 * 256)
    assert streamer.flush().shape == (1, right * 256)
    with pytest.raises(RuntimeError):
        streamer.push(mel)


@pytest.mark.parametrize("version", VERSIONS)
def test_mel_context_is_the_receptive_field(generators, version):
    """Frames beyond (left, right) of frame f never change f's samples; the bounds themselves do.

    In float64: the edge frames' influence is ~1e-10 with these weights, below float32's resolution.
    """
    model = copy.deepcopy(generators[version]).double()
    left, right = model.cfg.mel_context
    mel = torch.randn(1, 80, 60, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    f = 30
    base = model(mel)[:, f * 256 : (f + 1) * 256]

    def changed(frame):
        m = mel.clone()
        m[:, :, frame] += 3.0
        return (model(m)[:, f * 256 : (f + 1) * 256] - base).abs().max().item() > 0.0

    assert not changed(f + right + 1) and not changed(f - left - 1)
    assert changed(f + right) and changed(f - left)


def test_official_config_lookahead():
    v1 = HifiGanConfig()
    assert v1.mel_context == (13, 13) and round(v1.lookahead_ms, 1) == 150.9
    v3 = HifiGanConfig(
        resblock="2", upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8), upsample_initial_channel=256,
        resblock_kernel_sizes=(3, 5, 7), resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)),
    )
    assert v3.mel_context == (11, 11)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"resblock": "3"}, "resblock"),
        ({"upsample_rates": [8, 8, 2]}, "upsample_rates"),
        ({"upsample_kernel_sizes": [16, 16, 5, 4]}, "even difference"),
        ({"resblock_dilation_sizes": [[1, 3], [1, 3], [1, 3]]}, "resblock_dilation_sizes"),
        ({"num_mels": 100}, "num_mels"),
    ],
)
def test_config_errors_name_the_field(tmp_path, change, match):
    cfg = json.loads((FIX / "hifigan_v1_tiny" / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HifiGanConfigError, match=match):
        HifiGanConfig.from_json(tmp_path / "config.json")


def test_missing_key_and_mismatched_checkpoint(tmp_path):
    cfg = json.loads((FIX / "hifigan_v1_tiny" / "config.json").read_text())
    del cfg["upsample_rates"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HifiGanConfigError, match="upsample_rates"):
        HifiGanConfig.from_json(tmp_path / "config.json")
    with pytest.raises(HifiGanConfigError, match="do not fit"):
        load_hifigan(FIX / "hifigan_v1_tiny" / "generator.pth.tar", FIX / "hifigan_v3_tiny" / "config.json")
