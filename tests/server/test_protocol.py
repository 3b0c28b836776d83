"""WebSocket protocol, Sans-I/O: every bad input gets a coded rejection; fuzzed."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.server.protocol import (
    MAX_JSON_BYTES,
    Audio,
    CloseCode,
    End,
    Phase,
    ProtocolSession,
    Reject,
    Start,
)


def start(**fields):
    return json.dumps({"type": "start", "sample_rate": 16000, **fields})


def started(**fields):
    s = ProtocolSession(max_message_bytes=4096)
    (action,) = s.receive_text(start(**fields))
    assert isinstance(action, Start)
    return s


def test_happy_path():
    s = started(encoding="s16le", channels=1, interim_results=False, endpointing={"min_silence_ms": 300})
    assert s.request.pcm.sample_rate == 16000 and not s.request.interim_results
    assert s.request.endpointing.min_silence_ms == 300
    (audio,) = s.receive_binary(np.array([0, 16384, -32768], dtype="<i2").tobytes())
    assert isinstance(audio, Audio) and audio.samples.shape == (3, 1)
    assert s.receive_binary(b"") == []
    assert s.receive_text('{"type": "end"}') == [End()]
    assert s.phase == Phase.ENDED


def test_cache_aware_fields():
    s = started(lookahead_ms=480, decoder="ctc")
    assert (s.request.lookahead_ms, s.request.decoder) == (480, "ctc")
    assert (started().request.lookahead_ms, started().request.decoder) == (None, None)


def _rejected(actions, code, close):
    (action,) = actions
    assert isinstance(action, Reject), action
    assert action.code == code and action.close_code == close, action
    return action


@pytest.mark.parametrize(
    "message,code",
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"type": "end"}', "expected_start"),
        ('{"sample_rate": 16000}', "expected_start"),
        (json.dumps({"type": "start"}), "bad_request"),
        (start(sample_rate=0), "bad_sample_rate"),
        (start(sample_rate=16000.5), "bad_request"),
        (start(sample_rate=True), "bad_request"),
        (start(encoding="mp3"), "bad_audio"),
        (start(channels=9), "bad_audio"),
        (start(interim_results="yes"), "bad_request"),
        (start(endpointing={"threshold": 2}), "bad_request"),
        (start(endpointing={"silence": 1}), "bad_request"),
        (start(colour="blue"), "bad_request"),
        (start(lookahead_ms=-80), "bad_request"),
        (start(lookahead_ms="80"), "bad_request"),
        (start(lookahead_ms=80.0), "bad_request"),
        (start(decoder=1), "bad_request"),
    ],
)
def test_bad_start_messages(message, code):
    s = ProtocolSession()
    close = CloseCode.UNSUPPORTED_DATA if code == "expected_start" else CloseCode.INVALID_PAYLOAD
    _rejected(s.receive_text(message), code, close)
    assert s.phase == Phase.CLOSED
    assert s.receive_text(start()) == []  # a closed session ignores everything


def test_audio_before_start_and_after_end():
    _rejected(ProtocolSession().receive_binary(b"\0\0"), "unexpected_audio", CloseCode.UNSUPPORTED_DATA)
    s = started()
    s.receive_text('{"type": "end"}')
    _rejected(s.receive_binary(b"\0\0"), "unexpected_audio", CloseCode.UNSUPPORTED_DATA)


def test_bad_audio_messages():
    _rejected(started().receive_binary(b"\0\0\0"), "bad_audio", CloseCode.INVALID_PAYLOAD)  # odd byte count
    nan = np.array([0.0, np.nan], dtype="<f4").tobytes()
    _rejected(started(encoding="f32le").receive_binary(nan), "non_finite_audio", CloseCode.INVALID_PAYLOAD)
    _rejected(started(channels=2).receive_binary(b"\0\0"), "bad_audio", CloseCode.INVALID_PAYLOAD)  # half a stereo frame
    _rejected(started().receive_binary(b"\0" * 4098), "message_too_big", CloseCode.MESSAGE_TOO_BIG)


def test_text_where_audio_belongs_and_oversized_text():
    _rejected(started().receive_text('{"type": "start", "sample_rate": 16000}'), "unexpected_message", CloseCode.UNSUPPORTED_DATA)
    _rejected(started().receive_text("hello"), "bad_json", CloseCode.INVALID_PAYLOAD)
    _rejected(started().receive_text('{"type": "end", "x": 1}'), "bad_request", CloseCode.INVALID_PAYLOAD)
    _rejected(ProtocolSession().receive_text(" " * (MAX_JSON_BYTES + 1)), "message_too_big", CloseCode.MESSAGE_TOO_BIG)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=64), st.text(max_size=64), st.sampled_from([start(), start(encoding="f32le"), '{"type": "end"}'])), max_size=8))
def test_fuzz_any_message_sequence(messages):
    """Whatever arrives, the session answers with protocol actions only, and stays closed once closed."""
    s = ProtocolSession(max_message_bytes=32)
    closed = False
    for m in messages:
        actions = s.receive_binary(m) if isinstance(m, bytes) else s.receive_text(m)
        for a in actions:
            assert isinstance(a, (Start, Audio, End, Reject))
            if isinstance(a, Reject):
                assert a.code and a.message and isinstance(a.close_code, CloseCode)
        if closed:
            assert actions == []
        closed = closed or any(isinstance(a, Reject) for a in actions)
