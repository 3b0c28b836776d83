"""Fuzz targets for every wire parser (issue 20): structured random input gets a typed answer, never a crash.

- the WebSocket protocol session (JSON start messages with fields of any JSON type and value, audio of any bytes),
- PCM decoding (any bytes, any format),
- the gRPC request validation (`parse_request`: any field values),
- the voices YAML (any YAML document).

A short run is part of `make test`. A long run: `LEGATO_FUZZ_EXAMPLES=200000 .venv/bin/python -m pytest -q
tests/test_fuzz_parsers.py` (docs/SECURITY.md).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.server.protocol import Audio, End, ProtocolSession, Reject, Start
from legato.server.tts_requests import TtsRequestError, parse_request
from legato.stream.audio_io import PcmFormat, decode_pcm
from legato.stream.errors import LegatoError
from support.tts_toys import ToneVoice

EXAMPLES = int(os.environ.get("LEGATO_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.integers(min_value=10**300, max_value=10**301),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
START_KEYS = ["type", "sample_rate", "encoding", "channels", "model", "language", "interim_results", "endpointing",
              "token", "lookahead_ms", "decoder"]
starts = st.dictionaries(st.sampled_from(START_KEYS) | st.text(max_size=12), json_values, max_size=6).map(
    lambda d: {"type": "start", **d} if d.get("type") is None else d)


@FUZZ
@given(st.lists(st.one_of(starts.map(json.dumps), st.binary(max_size=256), st.text(max_size=40),
                          st.just('{"type": "end"}'), st.just('{"type": "start", "sample_rate": 16000}')), max_size=6))
def test_protocol_session_answers_every_sequence_with_typed_actions(messages):
    session = ProtocolSession(max_message_bytes=128)
    for message in messages:
        actions = session.receive_binary(message) if isinstance(message, bytes) else session.receive_text(message)
        assert all(isinstance(a, (Start, Audio, End, Reject)) for a in actions)
        for a in actions:
            if isinstance(a, Reject):
                assert a.code and isinstance(a.message, str)


@FUZZ
@given(st.binary(max_size=512), st.sampled_from(["s16le", "f32le"]), st.integers(1, 8))
def test_pcm_decoding_answers_any_bytes(data, encoding, channels):
    try:
        audio = decode_pcm(data, PcmFormat(encoding, 16000, channels))
    except LegatoError as exc:
        assert exc.code in ("bad_audio", "non_finite_audio")
        return
    assert audio.shape[1] == channels and bool((audio.abs() <= 1.0).all())


VOICES = {"tone": ToneVoice()}


@FUZZ
@given(st.text(max_size=60), st.text(max_size=8) | st.just("tone"), st.integers(-2**31, 2**31), st.integers(-5, 10),
       st.floats(allow_nan=True, allow_infinity=True, width=32), st.binary(max_size=64), st.text(max_size=20),
       st.text(max_size=140), st.booleans())
def test_grpc_request_validation_answers_any_fields(text, voice, rate, encoding, speed, reference, ref_text, request_id, streaming):
    try:
        parsed = parse_request(text=text, voice=voice, sample_rate_hz=rate, encoding=encoding, speed=speed, reference_audio=reference,
                               reference_text=ref_text, request_id=request_id, voices=VOICES, default_voice="tone", streaming=streaming)
    except TtsRequestError as exc:
        assert exc.status in ("INVALID_ARGUMENT", "NOT_FOUND")
        return
    assert parsed.voice is VOICES["tone"] and 0 < parsed.request.speed


yaml_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["voices", "default", "model", "checkpoint", "x"])
                                                                  | st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@FUZZ
@given(yaml_docs | st.text(max_size=80))
def test_voices_yaml_answers_any_document(tmp_path_factory, doc):
    import yaml

    from legato.tts.voices import VoiceConfigError, load_voices

    path = tmp_path_factory.mktemp("voices") / "v.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    try:
        load_voices(path)
    except (VoiceConfigError, LegatoError, ValueError) as exc:
        assert str(exc)


@pytest.mark.parametrize("doc", [
    {"voices": {"voices": {"model": []}}},  # found by the fuzz target: an unhashable model raised TypeError
    {"voices": {"x": {"model": "piper", "checkpoint": []}}},
    {"voices": {"x": {"model": "fastspeech2"}}},
])
def test_voices_yaml_cases_the_fuzzer_found(tmp_path, doc):
    import yaml

    from legato.tts.voices import VoiceConfigError, load_voices

    (tmp_path / "v.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(VoiceConfigError):
        load_voices(tmp_path / "v.yaml")
