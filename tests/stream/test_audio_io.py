"""PCM decoding and file reading: validation gives clear, coded errors."""

import numpy as np
import pytest
import torch

from legato.stream.audio_io import PcmFormat, decode_pcm, encode_pcm, expect_channels, read_audio
from legato.stream.errors import AudioFormatError, NonFiniteAudioError, SampleRateError


def test_s16le_round_trip():
    x = torch.tensor([[0.0], [0.5], [-1.0], [0.999]], dtype=torch.float32)
    y = decode_pcm(encode_pcm(x, "s16le"), PcmFormat("s16le", 16000))
    torch.testing.assert_close(y, x, atol=1 / 32768, rtol=0)


def test_f32le_stereo_deinterleaves():
    frames = np.array([[0.1, -0.1], [0.2, -0.2], [0.3, -0.3]], dtype="<f4")
    y = decode_pcm(frames.tobytes(), PcmFormat("f32le", 48000, channels=2))
    assert y.shape == (3, 2)
    np.testing.assert_array_equal(y.numpy(), frames)


def test_empty_payload_is_zero_samples():
    assert decode_pcm(b"", PcmFormat("s16le", 16000)).shape == (0, 1)


@pytest.mark.parametrize(
    "encoding,channels,size",
    [("s16le", 1, 3), ("f32le", 1, 6), ("s16le", 2, 6), ("f32le", 2, 12)],
)
def test_odd_byte_counts_are_rejected(encoding, channels, size):
    with pytest.raises(AudioFormatError, match="not a whole number") as e:
        decode_pcm(b"\x00" * size, PcmFormat(encoding, 16000, channels))
    assert e.value.code == "bad_audio"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_float_audio_is_rejected(value):
    data = np.array([0.0, value, 0.1], dtype="<f4").tobytes()
    with pytest.raises(NonFiniteAudioError, match="NaN or infinite") as e:
        decode_pcm(data, PcmFormat("f32le", 16000))
    assert e.value.code == "non_finite_audio"


def test_bad_format_fields():
    with pytest.raises(AudioFormatError, match="unknown encoding"):
        PcmFormat("mp3", 16000)
    with pytest.raises(SampleRateError):
        PcmFormat("s16le", 0)
    with pytest.raises(AudioFormatError, match="channels"):
        PcmFormat("s16le", 16000, channels=0)


def test_wrong_channel_count():
    with pytest.raises(AudioFormatError, match="expected 1 channel"):
        expect_channels(torch.zeros(10, 2), 1)


def test_read_real_clips_with_resampling(speech_dir):
    for name, rate in [("en_LDC93S1.wav", 16000), ("en_ljspeech_LJ002-0020.wav", 22050), ("en_librispeech_2412-153948-0000.flac", 16000)]:
        audio, sr = read_audio(str(speech_dir / name))
        assert sr == rate and audio.shape[1] == 1 and audio.dtype == torch.float32
        resampled, sr16 = read_audio(str(speech_dir / name), sample_rate=16000)
        assert sr16 == 16000
        assert abs(resampled.shape[0] - audio.shape[0] * 16000 / rate) <= 1


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "not_audio.wav"
    bad.write_bytes(b"garbage")
    with pytest.raises(AudioFormatError, match="cannot read audio file"):
        read_audio(str(bad))


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=256), encoding=st.sampled_from(["s16le", "f32le"]), channels=st.integers(1, 8))
def test_decode_never_fails_other_than_documented(data, encoding, channels):
    """Any bytes: either decoded into whole frames of finite samples, or a coded AudioFormatError."""
    fmt = PcmFormat(encoding, 16000, channels)
    try:
        audio = decode_pcm(data, fmt)
    except AudioFormatError as e:
        assert e.code in ("bad_audio", "non_finite_audio")
        return
    assert audio.shape == (len(data) // fmt.bytes_per_frame, channels)
    assert torch.isfinite(audio).all()
