"""CTC, RNNT and hybrid .nemo models made by NeMo 3.0.0 (tests/fixtures/nemo/*_tiny.nemo) against NeMo's outputs.

NeMo's own streaming differs from its offline decode in two known ways (tests/fixtures/nemo/NOTES.md):
at right context 0 its first steps pad the mel overlap with zeros it treats as audio, and at right
context 0 and 1 it never feeds a stream's last < 8 mel frames. Ours streams exactly what offline
computes, so streamed tokens are checked against NeMo's offline tokens everywhere and against
NeMo's streamed tokens, step by step, at right context 3 where NeMo's streaming is exact.
"""

import numpy as np
import pytest
import torch

from legato.asr.fastconformer.chunking import stream_steps
from legato.asr.fastconformer.nemo_file import NemoFileError, load_nemo
from legato.asr.fastconformer.config import UnsupportedConfigError
from legato.asr.frontends.nemo_mel import NemoMel

from conftest import FIXTURES

NEMO = FIXTURES / "nemo"
MODELS = {"ctc": ["L16R3", "L16R0"], "rnnt": ["L16R3", "L16R0"], "hybrid": ["L16R3", "L16R1", "L16R0"]}
CASES = [(m, i, tag) for m, tags in MODELS.items() for i, tag in enumerate(tags)]
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def z():
    return dict(np.load(NEMO / "models_tiny.npz"))


@pytest.fixture(scope="module")
def loaded():
    return {name: load_nemo(NEMO / f"{name}_tiny.nemo") for name in MODELS}


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    scale, err = float(ref.abs().max()), float((ours - ref).abs().max())
    assert err <= REL_TOL * scale, f"max abs err {err} vs scale {scale}"


def _mel(model, z):
    fe = NemoMel(model.cfg.mel)
    wave, wave_len = torch.from_numpy(z["wave"]), torch.from_numpy(z["wave_len"])
    with torch.inference_mode():
        return fe(wave, wave_len), fe.valid_frames(wave_len)


def test_loads_config_and_tokenizer(loaded):
    kinds = {name: (m.cfg.heads.kind, m.cfg.heads.decoders, m.cfg.encoder.conv_norm_type) for name, (m, _) in loaded.items()}
    assert kinds == {
        "ctc": ("ctc", ("ctc",), "batch_norm"),
        "rnnt": ("rnnt", ("rnnt",), "batch_norm"),
        "hybrid": ("hybrid", ("rnnt", "ctc"), "layer_norm"),
    }
    _, tok = loaded["rnnt"]
    assert tok.vocab_size == 64 and loaded["rnnt"][0].max_symbols == 10


@pytest.mark.parametrize("name", list(MODELS))
def test_front_end_matches_nemo_preprocessor(loaded, z, name):
    mel, mel_len = _mel(loaded[name][0], z)
    assert mel_len.tolist() == z["mel_len"].tolist()
    _close(mel, torch.from_numpy(z["mel"]).transpose(1, 2))


@pytest.mark.parametrize("name,lookahead,tag", CASES)
def test_offline_encoder_heads_and_tokens(loaded, z, name, lookahead, tag):
    model, _ = loaded[name]
    mel, mel_len = _mel(model, z)
    with torch.inference_mode():
        enc, enc_len = model.encoder(mel, mel_len, lookahead)
    ref_len = z[f"{name}/{tag}/enc_len"]
    assert enc_len.tolist() == ref_len.tolist()
    ref = torch.from_numpy(z[f"{name}/{tag}/enc"]).transpose(1, 2)
    for b in range(2):
        _close(enc[b, : ref_len[b]], ref[b, : ref_len[b]])
    for dec in model.cfg.heads.decoders:
        greedy = model.greedy_decoder(dec)
        with torch.inference_mode():
            if dec == "ctc":
                lp = model.ctc_head()(enc)
                ref_lp = torch.from_numpy(z[f"{name}/{tag}/ctc/log_probs"])
                for b in range(2):
                    _close(lp[b, : ref_len[b]], ref_lp[b, : ref_len[b]])
            ids, _ = greedy.decode(enc, enc_len, greedy.init_state(2, "cpu"))
        for b in range(2):
            assert ids[b] == z[f"{name}/{tag}/{dec}/offline_ids{b}"].tolist(), (dec, b)


@pytest.mark.parametrize("name,lookahead,tag", CASES)
def test_streaming_tokens(loaded, z, name, lookahead, tag):
    """Both rows stream batched together (they end at different steps); every decoder of the model."""
    model, _ = loaded[name]
    mel, mel_len = _mel(model, z)
    exact = tag == "L16R3"
    for dec in model.cfg.heads.decoders:
        greedy = model.greedy_decoder(dec)
        state = greedy.init_state(2, "cpu")
        ids: list[list[int]] = [[], []]
        with torch.inference_mode():
            for k, (rows, y, v) in enumerate(stream_steps(model.encoder, mel, mel_len, lookahead)):
                sel = torch.tensor(rows)
                work = state.gather(sel)
                new, _ = greedy.decode(y, v, work)
                state.scatter_(sel, work)
                for j, i in enumerate(rows):
                    ids[i] += new[j]
                if exact and f"{name}/{tag}/step{k:02d}/enc" in z:  # each step's frames as NeMo's step
                    ref = torch.from_numpy(z[f"{name}/{tag}/step{k:02d}/enc"]).transpose(1, 2)
                    ref_len = z[f"{name}/{tag}/step{k:02d}/enc_len"]
                    for j, i in enumerate(rows):
                        n = min(int(ref_len[i]), int(v[j]))
                        if n:
                            _close(y[j, :n], ref[i, :n])
                    if dec == "rnnt" and f"{name}/{tag}/rnnt/step{k:02d}/dec_h" in z and len(rows) == 2:
                        _close(state.h, torch.from_numpy(z[f"{name}/{tag}/rnnt/step{k:02d}/dec_h"]))
                        _close(model.joint.pred(state.g), torch.from_numpy(z[f"{name}/{tag}/rnnt/step{k:02d}/dec_out"])[:, 0])
        for b in range(2):
            assert ids[b] == z[f"{name}/{tag}/{dec}/offline_ids{b}"].tolist(), (dec, b)
            if exact:
                assert ids[b] == z[f"{name}/{tag}/{dec}/stream_ids{b}"].tolist(), (dec, b)


def test_not_a_nemo_file(tmp_path):
    bad = tmp_path / "x.nemo"
    bad.write_bytes(b"not a tar")
    with pytest.raises(NemoFileError, match="not a readable .nemo archive"):
        load_nemo(bad)
    with pytest.raises(NemoFileError, match="no such .nemo file"):
        load_nemo(tmp_path / "missing.nemo")


def test_unsupported_model_class_names_the_field(tmp_path):
    import io
    import tarfile

    import yaml

    with tarfile.open(NEMO / "ctc_tiny.nemo") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    cfg = yaml.safe_load(members["./model_config.yaml"])
    cfg["target"] = "nemo.collections.asr.models.EncDecMultiTaskModel"
    members["./model_config.yaml"] = yaml.safe_dump(cfg).encode()
    out = tmp_path / "canary.nemo"
    with tarfile.open(out, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsupportedConfigError, match="target"):
        load_nemo(out)


def test_incremental_words_equal_the_whole_decode_at_every_prefix():
    from legato.asr.fastconformer.recognizer import FastConformerRecognizer
    from legato.asr.fastconformer.words import WordBuilder, words_from_tokens

    tok = FastConformerRecognizer.from_nemo(FIXTURES / "nemo" / "hybrid_tiny.nemo").tokenizer
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, tok.vocab_size, (60,), generator=g).tolist()
    frames = sorted(torch.randint(0, 200, (60,), generator=g).tolist())
    builder = WordBuilder()
    for n in [0, 1, 2, 3, 7, 8, 20, 21, 22, 40, 59, 60]:  # growing, in uneven steps
        assert builder.words(tok, tokens[:n], frames[:n], 0.08) == words_from_tokens(tok, tokens[:n], frames[:n], 0.08), n
