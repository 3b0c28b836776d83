"""Paraformer against FunASR 1.4.16 (fixtures made by tests/fixtures/make_paraformer_fixtures.py): offline encoder,
CIF and decoder; the chunked streaming model chunk by chunk for two chunk configs, the tail chunk included;
batched streams equal streams alone; config errors; FunASR's text post-processing."""

import numpy as np
import pytest
import torch

from legato.asr.paraformer.cif import integrate_and_fire
from legato.asr.paraformer.config import UnsupportedConfigError
from legato.asr.paraformer.loader import ModelFolderError, load_paraformer
from legato.asr.paraformer.streaming import ChunkConfig, StreamingParaformer
from legato.asr.paraformer.text import sentence

from conftest import FIXTURES

PARA = FIXTURES / "paraformer"
VARIANTS = {"c0_10_5": (0, 10, 5), "c5_10_5": (5, 10, 5)}


@pytest.fixture(scope="module")
def offline():
    return load_paraformer(PARA / "paraformer_tiny"), np.load(PARA / "paraformer_tiny.npz")


@pytest.fixture(scope="module")
def streaming():
    return load_paraformer(PARA / "paraformer_streaming_tiny"), np.load(PARA / "paraformer_streaming_tiny.npz")


def close(a, b, tol):
    b = torch.as_tensor(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= tol, err


def test_offline_matches_funasr_each_row_as_if_alone(offline):
    bundle, z = offline
    audio, lengths = torch.from_numpy(z["audio"]), torch.from_numpy(z["feats_len"])
    rows = [bundle.frontend(audio[i : i + 1, : int(z["audio_len"][i])])[0] for i in range(2)]
    feats = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    close(feats * (torch.arange(feats.shape[1])[None, :, None] < lengths[:, None, None]), z["feats"], 1e-4)
    out = bundle.model(feats, lengths)
    texts = ["water thirteen one middle antecone clubs房john john", "mr quilter nor mr nor glad mr nor your mr"]
    for i in range(2):
        n, t = int(out.counts[i]), int(lengths[i])
        assert n == int(z["token_num"][i])
        close(out.encoder[i, :t], z["enc_out"][i, :t], 1e-4)
        if i == 0:  # FunASR's padded row 1 leaks a padded frame into its last alpha; ours is the row alone
            close(out.alphas[i, : t + 1], z["alphas"][i, : t + 1], 1e-5)
        close(out.embeds[i, :n], z["acoustic_embeds"][i, :n], 1e-4)
        close(out.logits[i, :n], z["decoder_logits"][i, :n], 1e-3)
        assert out.ids[i] == z[f"token_ids_{i}"].tolist()
        assert sentence([bundle.tokens[k] for k in out.ids[i]]) == texts[i]
    alone = bundle.model(feats[1:, : int(lengths[1])], lengths[1:])
    assert alone.ids[0] == out.ids[1] and torch.allclose(alone.alphas[0, : int(lengths[1]) + 1], out.alphas[1, : int(lengths[1]) + 1], atol=1e-6)


def _chunks(z, variant, clip):
    pre = f"{variant}/s{clip}/"
    names = sorted({k.split("/")[2] for k in z.files if k.startswith(pre)})
    return [(pre + n + "/", (pre + n + "/cache_feats_in") in z.files) for n in names]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_streaming_matches_funasr_chunk_by_chunk(streaming, variant):
    bundle, z = streaming
    sp = StreamingParaformer(bundle.model, ChunkConfig(*VARIANTS[variant]))
    for clip in (0, 1):
        state = sp.init_state(1)
        chunks = _chunks(z, variant, clip)
        for j, (pre, tail) in enumerate(chunks):
            out = sp.step(None if tail else torch.from_numpy(z[pre + "feats"])[None], state, final=j == len(chunks) - 1)
            n = int(out.counts[0])
            close(out.encoder[0], z[pre + "enc_out"], 1e-4)
            close(out.alphas[0], z[pre + "alphas"], 1e-5)
            close(state.cif_hidden[0], z[pre + "cif_hidden_out"], 1e-4)
            if n:
                close(out.embeds[0, :n], z[pre + "acoustic_embeds"], 1e-4)
                close(out.logits[0, :n], z[pre + "decoder_logits"], 1e-3)
            assert out.ids[0] == z[pre + "token_ids"].tolist(), (pre, out.ids[0])


def test_streams_batched_in_one_step_equal_streams_alone(streaming):
    """Both clips stepped as rows of one batch (the shorter ends first) give each clip's own results."""
    bundle, z = streaming
    sp = StreamingParaformer(bundle.model, ChunkConfig(0, 10, 5))
    chunks = [_chunks(z, "c0_10_5", clip) for clip in (0, 1)]
    state = sp.init_state(2)
    got: list[list[list[int]]] = [[], []]
    for j in range(max(len(c) for c in chunks)):
        live = [c for c in (0, 1) if j < len(chunks[c]) and not chunks[c][j][1] and j < len(chunks[c]) - 1]
        if len(live) == 2:  # a shared normal step
            feats = torch.stack([torch.from_numpy(z[chunks[c][j][0] + "feats"]) for c in live])
            out = sp.step(feats, state)
            for c in live:
                got[c].append(out.ids[c])
            continue
        for c in (0, 1):  # the rest one stream at a time, through its own rows of the state
            if j >= len(chunks[c]):
                continue
            pre, tail = chunks[c][j]
            rows = torch.tensor([c])
            sub = state.gather(rows)
            out = sp.step(None if tail else torch.from_numpy(z[pre + "feats"])[None], sub, final=j == len(chunks[c]) - 1)
            state.scatter_(rows, sub)
            got[c].append(out.ids[0])
    for c in (0, 1):
        assert got[c] == [z[pre + "token_ids"].tolist() for pre, _ in chunks[c]]


def test_cif_fires_like_the_sequential_loop():
    torch.manual_seed(0)
    alphas, hidden = torch.rand(3, 40) * 0.6, torch.randn(3, 40, 8)
    out = integrate_and_fire(alphas, hidden)
    for b in range(3):
        fired, acc, frame = [], 0.0, torch.zeros(8)
        for t in range(40):
            a, h = float(alphas[b, t]), hidden[b, t]
            if acc + a < 1:
                acc, frame = acc + a, frame + a * h
            else:
                fired.append(frame + (1 - acc) * h)
                acc = acc + a - 1
                frame = acc * h
        assert int(out.counts[b]) == len(fired)
        close(out.embeds[b, : len(fired)], torch.stack(fired), 1e-5)
        assert abs(float(out.residual_alpha[b]) - acc) < 1e-5
        close(out.residual_frame[b], frame, 1e-5)


def test_unsupported_configs_and_bad_folders_are_named(tmp_path):
    import shutil

    import yaml

    folder = tmp_path / "m"
    shutil.copytree(PARA / "paraformer_tiny", folder)
    conf = yaml.safe_load((folder / "config.yaml").read_text())
    conf["encoder"] = "ConformerEncoder"
    (folder / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(UnsupportedConfigError, match="encoder: 'ConformerEncoder'"):
        load_paraformer(folder)
    (folder / "model.pt").unlink()
    with pytest.raises(ModelFolderError, match="missing model.pt"):
        load_paraformer(folder)
    with pytest.raises(UnsupportedConfigError, match="offline Paraformer has no chunked encoder"):
        StreamingParaformer(load_paraformer(PARA / "paraformer_tiny").model)


@pytest.mark.parametrize(
    "tokens,text",
    [
        (["广", "州", "市"], "广州市"),
        (["she", "had", "dash@@", "wood"], "she had dashwood"),
        (["cons@@", "房", "go"], "房consgo"),
        (["i", "b", "m", "is", "here"], "IBM is here"),
        (["water", "房", "john", "<unk>", "john"], "water房john john"),
        (["dash@@"], ""),
    ],
)
def test_text_postprocessing_as_funasr(tokens, text):
    assert sentence(tokens) == text
