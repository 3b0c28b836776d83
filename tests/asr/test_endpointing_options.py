"""The stream option ``endpointing``, read once for every ASR path (asr/endpointing.py)."""

import pytest

from legato.asr.endpointing import Endpointing


def test_forms_defaults_and_frames():
    assert Endpointing.from_options({}, 500) == Endpointing(True, 500, 0.5)
    assert Endpointing.from_options({"endpointing": False}, 500).frames(0.08) is None
    assert Endpointing.from_options({"endpointing": True}, 600).min_silence_ms == 600
    ep = Endpointing.from_options({"endpointing": {"min_silence_ms": 300, "threshold": 0.7}}, 500)
    assert (ep.min_silence_ms, ep.threshold) == (300, 0.7)
    assert ep.frames(0.08) == 4 and ep.frames(0.08, ceil=True) == 4  # 3.75 frames
    assert Endpointing.from_options({"endpointing": {"min_silence_ms": 250}}, 500).frames(0.08) == 3  # 3.125: nearest
    assert Endpointing.from_options({"endpointing": {"min_silence_ms": 250}}, 500).frames(0.08, ceil=True) == 4
    assert Endpointing.from_options({"endpointing": {"min_silence_ms": 1}}, 500).frames(0.08) == 1  # at least one


@pytest.mark.parametrize("value", [{"min_silence_ms": 0}, {"min_silence_ms": -5}, {"min_silence_ms": "500"},
                                   {"min_silence_ms": 10**9}, {"threshold": 1.5}, {"threshold": True}, "yes", 3])
def test_bad_values_are_the_clients_error(value):
    with pytest.raises(ValueError, match="endpointing"):
        Endpointing.from_options({"endpointing": value}, 500)
