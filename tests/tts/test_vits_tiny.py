"""Our VITS on tiny seeded Piper voices: multi-speaker + deterministic durations, and stochastic durations + resblock 1.

Fixtures: tests/fixtures/tts/vits/tiny_{multi,sdp}/ (voice.onnx as Piper's export_onnx.py writes it, the Lightning
voice.ckpt, voice.onnx.json) and reference.npz, made by tests/fixtures/make_piper_vits.py with Piper's own training
code and onnxruntime, at noise_scale = noise_w = 0 (NOTES.md there).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from legato.tts.vits.loader import load_piper_voice
from legato.tts.vits.streaming import Buckets, SentenceStream, decode_windows
from conftest import FIXTURES  # noqa: E402

FIX = FIXTURES / "tts" / "vits"
VOICES = ("tiny_multi", "tiny_sdp")


@pytest.fixture(scope="module")
def ref():
    return np.load(FIX / "reference.npz")


@pytest.fixture(scope="module")
def meta(ref):
    return json.loads(str(ref["meta"]))


def _load(name: str, fmt: str):
    return load_piper_voice(FIX / name / f"voice.{fmt}", FIX / name / "voice.onnx.json")


def _cases(meta, name):
    return sorted(meta["voices"][name]["cases"])


@pytest.mark.parametrize("fmt", ["onnx", "ckpt"])
@pytest.mark.parametrize("name", VOICES)
def test_matches_piper(ref, meta, name, fmt):
    """Every case: the same durations per phoneme, the prior, the flow output and the waveform as Piper's."""
    voice = _load(name, fmt)
    assert voice.config.use_sdp == (name == "tiny_sdp") and voice.config.n_speakers == (3 if name == "tiny_multi" else 1)
    for case in _cases(meta, name):
        q = case.split("__")[1]
        ids = torch.from_numpy(ref[f"{name}__{q}__ids"]).long()
        sid = ref[f"{case}__sid"] if f"{case}__sid" in ref.files else None
        length_scale = float(ref[f"{case}__length_scale"])
        with torch.inference_mode():
            x, m, logs, mask = voice.model.enc_p(ids[None], torch.tensor([ids.shape[0]]))
            np.testing.assert_allclose(m[0].numpy(), ref[f"{name}__{q}__m_p"].reshape(m[0].shape), atol=1e-5)
            (enc,) = voice.model.encode(
                ids[None], torch.tensor([ids.shape[0]]), length_scales=torch.tensor([length_scale]), duration_noise=None,
                prior_noise=None, noise_scales=torch.zeros(1), speaker_ids=None if sid is None else torch.tensor([int(np.asarray(sid).reshape(-1)[0])]),
            )
            assert enc.durations.tolist() == ref[f"{case}__w_ceil"].reshape(-1).astype(int).tolist(), case
            (audio,) = voice.model.infer([ids.tolist()], length_scale=length_scale,
                                         speaker_id=None if sid is None else int(np.asarray(sid).reshape(-1)[0]))
        want = ref[f"{case}__audio"].reshape(-1)
        assert audio.shape[0] == want.shape[0], case
        assert float(np.abs(audio.numpy() - want).max()) < 1e-5, case


@pytest.mark.parametrize("name", VOICES)
@pytest.mark.parametrize("first,largest,buckets", [(1, 1, None), (2, 5, None), (16, 128, None), (2, 5, Buckets(frames=8))])
def test_streaming_equals_whole(ref, name, first, largest, buckets):
    voice = _load(name, "onnx")
    ids = ref[f"{name}__q2__ids"].tolist()
    g = torch.Generator().manual_seed(3)
    speaker = torch.tensor([2]) if voice.config.n_speakers > 1 else None
    with torch.inference_mode():
        (enc,) = voice.model.encode(
            torch.tensor([ids]), torch.tensor([len(ids)]), length_scales=torch.ones(1),
            duration_noise=torch.randn(1, 2, len(ids), generator=g) * 0.8,
            prior_noise=lambda r, t: torch.randn(voice.config.inter_channels, t, generator=g), noise_scales=torch.full((1,), 0.667),
            speaker_ids=speaker,
        )
        whole = voice.model.decode(enc.z_p[None], torch.tensor([enc.z_p.shape[1]]), None if enc.g is None else enc.g[None])[0]
        stream = SentenceStream(voice.model, enc.z_p, enc.g, first, largest)
        parts = []
        while not stream.done:
            parts += decode_windows(voice.model, [stream.next_window()], buckets)
    assert float((torch.cat(parts) - whole).abs().max()) < 1e-5


def test_padded_batch_rows_equal_rows_alone(ref):
    """Piper's own batch differs from its rows alone (its decoder sees the padding); ours does not."""
    voice = _load("tiny_multi", "onnx")
    seqs = [ref[f"tiny_multi__{q}__ids"].tolist() for q in ("q0", "q1", "q2")]
    with torch.inference_mode():
        batch = voice.model.infer(seqs, speaker_id=2)
        for row, s in zip(batch, seqs):
            (alone,) = voice.model.infer([s], speaker_id=2)
            assert row.shape == alone.shape and float((row - alone).abs().max()) < 1e-5
