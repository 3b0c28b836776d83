"""ASR front-ends: streaming equals offline at any chunk split; state and input handling.

Parity with NeMo, FunASR and Whisper themselves is in test_frontends_parity.py.
"""

import math

import pytest
import torch

from legato.asr.frontends import (
    Cmvn,
    FunasrFrontend,
    KaldiFbank,
    KaldiFbankConfig,
    Lfr,
    LfrConfig,
    NemoMel,
    NemoMelConfig,
    WhisperMel,
    WhisperMelConfig,
    load_am_mvn,
    normalize_window,
    pad_or_trim,
)
from legato.stream.errors import AudioFormatError, NonFiniteAudioError
from legato.stream.module import random_splits, run_streaming

SPLITS = [1, 2, 8, 160, 400, "random"]
RATE = 16000


def _audio(num_samples, batch=2, seed=0):
    """Noise plus a chirp, different per row: broadband, with quiet and loud bins."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples, dtype=torch.float64) / RATE
    rows = []
    for b in range(batch):
        chirp = 0.5 * torch.sin(2 * math.pi * (200 + 300 * b + 2000 * t) * t)
        rows.append(chirp + 0.05 * torch.randn(num_samples, generator=g, dtype=torch.float64))
    return torch.stack(rows).to(torch.float32)


def _cmvn(dim=560, seed=3):
    g = torch.Generator().manual_seed(seed)
    return Cmvn(-10 + 2 * torch.randn(dim, generator=g), 0.1 + 0.4 * torch.rand(dim, generator=g))


FRONTENDS = {
    "nemo": lambda: NemoMel(NemoMelConfig(normalize="NA")),
    "nemo_pad16": lambda: NemoMel(NemoMelConfig(normalize="NA", pad_to=16)),
    "kaldi_fbank": lambda: KaldiFbank(),
    "kaldi_fbank_f64": lambda: KaldiFbank(KaldiFbankConfig(window="povey", compute_dtype="float64")),  # w2v-BERT's
    "funasr": lambda: FunasrFrontend(KaldiFbankConfig(), LfrConfig(), _cmvn()),
    "whisper80": lambda: WhisperMel(),
    "whisper128": lambda: WhisperMel(WhisperMelConfig(n_mels=128)),
}


def _sizes(split, total, seed=0):
    if split == "random":
        return random_splits(total, torch.Generator().manual_seed(seed), max_chunk=401)
    return split


def _close(streamed, offline):
    assert streamed.shape == offline.shape, (streamed.shape, offline.shape)
    # Same arithmetic per frame; only the FFT's batching differs (about 1e-6 on log features).
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_streaming_equals_offline(name, split):
    module = FRONTENDS[name]()
    # Chunks of 1 sample cost a step each: half a second of audio keeps that quick.
    audio = _audio(8000 if split in (1, 2) else 19_321)
    _close(run_streaming(module, audio, _sizes(split, audio.shape[1])), module(audio))


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_random_split_with_small_chunks(name):
    module = FRONTENDS[name]()
    audio = _audio(4321, seed=1)
    sizes = random_splits(audio.shape[1], torch.Generator().manual_seed(5), max_chunk=17)
    _close(run_streaming(module, audio, sizes), module(audio))


@pytest.mark.parametrize("num_samples", [0, 1, 159, 160, 199, 200, 201, 399, 400, 401, 560, 561])
@pytest.mark.parametrize("chunk", [1, 7, 200])
def test_nemo_and_fbank_short_inputs(num_samples, chunk):
    audio = _audio(num_samples, seed=num_samples)
    for module in (NemoMel(NemoMelConfig(normalize="NA", pad_to=8)), KaldiFbank(), FunasrFrontend(cmvn=_cmvn())):
        _close(run_streaming(module, audio, chunk), module(audio))


@pytest.mark.parametrize("num_samples", [201, 202, 319, 320, 321, 359, 360, 361, 480, 481, 1000])
@pytest.mark.parametrize("chunk", [1, 7, 200, 201])
def test_whisper_edges_of_the_reflection(num_samples, chunk):
    """The head mirror needs 201 samples; the tail mirror reaches one sample before the last frame."""
    module = WhisperMel()
    audio = _audio(num_samples, seed=num_samples)
    _close(run_streaming(module, audio, chunk), module(audio))


def test_frame_counts():
    nemo, whisper, funasr = NemoMel(NemoMelConfig(normalize="NA", pad_to=16)), WhisperMel(), FunasrFrontend()
    for n in (0, 399, 400, 16000, 46797):
        audio = _audio(n, batch=1)
        assert nemo(audio).shape[1] == nemo.num_frames(n)
        assert int(nemo.valid_frames(n)) == n // 160
        assert funasr(audio).shape[1] == funasr.num_frames(n) == math.ceil(max(0, 1 + (n - 400) // 160) / 6)
        if n > 200:
            assert whisper(audio).shape[1] == whisper.num_frames(n) == n // 160


def test_kaldi_fbank_in_float64_is_float32_out_and_near_the_float32_one():
    audio = _audio(16000)
    f64 = KaldiFbank(KaldiFbankConfig(compute_dtype="float64"))
    assert f64.window.dtype == f64.banks.dtype == torch.float64 and f64(audio).dtype == torch.float32
    # float32 rounding moves the quietest bins' logs: 4e-4 here, 2e-3 on the XCodec2 fixture's speech
    torch.testing.assert_close(f64(audio), KaldiFbank()(audio), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="compute_dtype"):
        KaldiFbankConfig(compute_dtype="float16")


def test_nemo_last_frame_is_padding():
    """NeMo's valid length is n // hop: the last of its n // hop + 1 frames is pad_value, streamed too."""
    module = NemoMel(NemoMelConfig(normalize="NA"))
    audio = _audio(5000)
    offline = module(audio)
    assert offline.shape[1] == 5000 // 160 + 1
    assert torch.all(offline[:, -1] == 0)
    assert torch.all(run_streaming(module, audio, 333)[:, -1] == 0)


def test_nemo_lengths_mask_a_padded_batch():
    """A padded batch with ``lengths`` gives each row what it gets alone (then pad_value)."""
    module = NemoMel(NemoMelConfig(normalize="per_feature", pad_to=16))
    audio = _audio(9000)
    audio[1, 6000:] = 0.7  # garbage past row 1's length must not leak in
    batch = module(audio, lengths=torch.tensor([9000, 6000]))
    for row, n in ((0, 9000), (1, 6000)):
        alone = module(audio[row : row + 1, :n])[0]
        torch.testing.assert_close(batch[row, : alone.shape[0]], alone, atol=1e-5, rtol=1e-5)
        assert torch.all(batch[row, alone.shape[0] :] == 0)
    for bad in (torch.tensor([9000]), torch.tensor([9000.0, 6000.0]), torch.tensor([9001, 0]), torch.tensor([-1, 0])):
        with pytest.raises(AudioFormatError, match="lengths"):
            module(audio, lengths=bad)


@pytest.mark.parametrize("mode", ["per_feature", "all_features"])
def test_nemo_normalisation_statistics(mode):
    module = NemoMel(NemoMelConfig(normalize=mode))
    raw = NemoMel(NemoMelConfig(normalize="NA"))(_audio(16000))[:, :-1].double()
    out = module(_audio(16000))[:, :-1].double()
    dims = (1,) if mode == "per_feature" else (1, 2)
    mean, std = raw.mean(dim=dims, keepdim=True), raw.std(dim=dims, keepdim=True)
    torch.testing.assert_close(out, (raw - mean) / (std + 1e-5), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["per_feature", "all_features"])
def test_nemo_refuses_to_stream_utterance_statistics(mode):
    with pytest.raises(ValueError, match="normalize='NA'"):
        NemoMel(NemoMelConfig(normalize=mode)).init_state(1)


def test_nemo_config_from_a_nemo_preprocessor_mapping():
    cfg = {"_target_": "nemo...AudioToMelSpectrogramPreprocessor", "sample_rate": 16000, "normalize": "per_feature",
           "window_size": 0.025, "window_stride": 0.01, "window": "hann", "features": 80, "n_fft": 512, "dither": 1e-5, "pad_to": 0}
    assert NemoMelConfig.from_nemo(cfg) == NemoMelConfig()
    assert NemoMelConfig.from_nemo({}).n_mels == 64 and NemoMelConfig.from_nemo({}).pad_to == 16  # NeMo's class defaults
    with pytest.raises(ValueError, match="exact_pad"):
        NemoMelConfig.from_nemo({"exact_pad": True})
    assert isinstance(NemoMel.from_config(cfg), NemoMel)


def test_funasr_from_frontend_conf(tmp_path):
    path = tmp_path / "am.mvn"
    shift, scale = [f"{-i}.5" for i in range(560)], [f"0.{i + 1}" for i in range(560)]
    path.write_text(
        "<Nnet>\n<Splice> 560 560\n[ 0 ]\n<AddShift> 560 560\n<LearnRateCoef> 0 [ " + " ".join(shift) + " ]\n"
        "<Rescale> 560 560\n<LearnRateCoef> 0 [ " + " ".join(scale) + " ]\n</Nnet>\n"
    )
    conf = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 7, "lfr_n": 6}
    module = FunasrFrontend.from_funasr(conf, path)
    assert module.lfr.config == LfrConfig() and module.fbank.config == KaldiFbankConfig()
    assert module.cmvn.shift[3].item() == -3.5 and module.cmvn.scale[0].item() == pytest.approx(0.1)


def test_load_am_mvn_rejects_malformed_files(tmp_path):
    path = tmp_path / "bad.mvn"
    path.write_text("<Nnet>\n<AddShift> 3 3\n<LearnRateCoef> 0 [ 1 2 3 ]\n</Nnet>\n")
    with pytest.raises(ValueError, match="Rescale"):
        load_am_mvn(path)
    path.write_text("<AddShift> 3 3\n<LearnRateCoef> 0 [ 1 2 ]\n<Rescale> 3 3\n<LearnRateCoef> 0 [ 1 2 3 ]\n")
    with pytest.raises(ValueError, match="declares 3 values, has 2"):
        load_am_mvn(path)


@pytest.mark.parametrize("config", [LfrConfig(), LfrConfig(5, 3), LfrConfig(1, 1), LfrConfig(4, 4)])
def test_lfr_matches_its_definition_and_streams(config):
    """Block j of output i is frame clamp(n*i + j - (m-1)//2, 0, T-1), for ceil(T/n) outputs."""
    m, n = config.lfr_m, config.lfr_n
    lfr = Lfr(config, num_features=3)
    g = torch.Generator().manual_seed(0)
    for frames in range(0, 30):
        x = torch.randn(2, frames, 3, generator=g)
        out = lfr(x)
        assert out.shape == (2, math.ceil(frames / n), m * 3)
        for i in range(out.shape[1]):
            rows = [min(max(n * i + j - (m - 1) // 2, 0), frames - 1) for j in range(m)]
            assert torch.equal(out[:, i], x[:, rows].reshape(2, -1))
        for split in (1, 2, random_splits(frames, g, max_chunk=9) if frames else 1):
            assert torch.equal(run_streaming(lfr, x, split), out)


def test_whisper_window_normalisation_and_pad_or_trim():
    module = WhisperMel()
    audio = _audio(20000)
    raw = module(audio)
    feats = module.log_mel_spectrogram(audio)
    torch.testing.assert_close(feats, normalize_window(raw))
    for row in range(2):  # the floor is 8 log10 units below each row's own maximum
        top = raw[row].max()
        torch.testing.assert_close(feats[row], (torch.maximum(raw[row], top - 8) + 4) / 4)
    assert pad_or_trim(audio).shape == (2, 480000)
    assert torch.equal(pad_or_trim(audio)[:, :20000], audio) and torch.all(pad_or_trim(audio)[:, 20000:] == 0)
    assert torch.equal(pad_or_trim(torch.zeros(3, 500000)), torch.zeros(3, 480000))
    assert pad_or_trim(torch.zeros(80, 10), 3000, axis=1).shape == (80, 3000)
    assert module.log_mel_spectrogram(pad_or_trim(audio[:1])).shape == (1, 3000, 80)


def test_whisper_needs_more_than_200_samples():
    module = WhisperMel()
    with pytest.raises(ValueError, match="more than 200"):
        module(_audio(200))
    state = module.init_state(2)
    module.step(_audio(150), state)
    with pytest.raises(ValueError, match="more than 200"):
        module.flush(state)


BAD_INPUTS = [
    (torch.zeros(400), AudioFormatError, "batch, num_samples"),
    (torch.zeros(1, 1, 400), AudioFormatError, "batch, num_samples"),
    (torch.zeros(1, 400, dtype=torch.float64), AudioFormatError, "float32"),
    (torch.zeros(1, 400, dtype=torch.int16), AudioFormatError, "float32"),
    ([0.0] * 400, AudioFormatError, "torch.Tensor"),
    (torch.full((1, 400), float("nan")), NonFiniteAudioError, "NaN"),
    (torch.tensor([[0.0] * 399 + [float("inf")]]), NonFiniteAudioError, "infinite"),
]


@pytest.mark.parametrize("name", sorted(FRONTENDS))
@pytest.mark.parametrize("bad,error,message", BAD_INPUTS)
def test_bad_input_gives_clear_errors(name, bad, error, message):
    module = FRONTENDS[name]()
    with pytest.raises(error, match=message):
        module(bad)
    with pytest.raises(error, match=message):
        module.step(bad, module.init_state(1))


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_step_checks_rows_against_the_state(name):
    module = FRONTENDS[name]()
    with pytest.raises(AudioFormatError, match="rows"):
        module.step(_audio(100, batch=3), module.init_state(2))


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_rows_in_different_phases_are_refused(name):
    """A step's output is one tensor, so every row must cut the same number of frames."""
    module = FRONTENDS[name]()
    state, solo = module.init_state(2), module.init_state(1)
    module.step(_audio(500, batch=1), solo)
    state.scatter_(torch.tensor([0]), solo)
    assert module.batch_key(state, 0) != module.batch_key(state, 1)
    with pytest.raises(ValueError, match="different"):
        module.step(_audio(160), state)


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_rows_at_different_positions_in_one_phase_batch_together(name):
    """Streams that started at different times share steps once their batch_key agrees."""
    module = FRONTENDS[name]()
    chunk = 1600  # 10 hops; 3 chunks = 30 hops = 5 LFR outputs, so every phase repeats
    a, b = _audio(chunk * 7, batch=1, seed=5), _audio(chunk * 4, batch=1, seed=6)
    state = module.init_state(2)
    solo = module.init_state(1)
    head = [module.step(a[:, i * chunk : (i + 1) * chunk], solo) for i in range(3)]
    state.scatter_(torch.tensor([0]), solo)  # a is 3 chunks in, b has not started
    out_a, out_b = head, []
    for i in range(4):
        if i == 0:  # b's first chunk is in a different phase: it steps alone
            solo_b = state.gather(torch.tensor([1]))
            out_b.append(module.step(b[:, :chunk], solo_b))
            state.scatter_(torch.tensor([1]), solo_b)
            out_a.append(module.step(a[:, 3 * chunk : 4 * chunk], solo))
            state.scatter_(torch.tensor([0]), solo)
            continue
        assert module.batch_key(state, 0) == module.batch_key(state, 1)
        y = module.step(torch.cat([a[:, (3 + i) * chunk : (4 + i) * chunk], b[:, i * chunk : (i + 1) * chunk]]), state)
        out_a.append(y[:1])
        out_b.append(y[1:])
    for rows, x, out in ((torch.tensor([0]), a, out_a), (torch.tensor([1]), b, out_b)):
        own = state.gather(rows)
        _close(torch.cat(out + [module.flush(own)], dim=1), module(x))


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_reset_restarts_masked_rows_and_state_is_fixed_shape(name):
    module = FRONTENDS[name]()
    state = module.init_state(2)
    shapes = {k: v.shape for k, v in state.leaves()}
    module.step(_audio(1234), state)
    assert {k: v.shape for k, v in state.leaves()} == shapes
    module.reset(state, torch.tensor([True, True]))
    fresh = module.init_state(2)
    for (k, v), (_, f) in zip(state.leaves(), fresh.leaves()):
        assert torch.equal(v, f), k
    # A restarted batch streams like a fresh one.
    audio = _audio(3000, seed=4)
    out = torch.cat([module.step(audio, state), module.flush(state)], dim=1)
    _close(out, module(audio))
