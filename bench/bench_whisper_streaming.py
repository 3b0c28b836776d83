"""Streaming Whisper tiny.en on the real clips: commit delay of finals per word, transcript vs offline, cost.

Each English clip in ../shared/testdata/speech, followed by 1 s of silence (a speaker's pause, so the VAD endpoint
ends the utterance as it would live), is fed in 100 ms chunks to ``WhisperStage`` (Silero VAD endpointing on,
updates every --interval seconds), once per finals mode:

- ``utterance`` (the default): an utterance's final comes from one pass over its whole audio when it ends;
- ``agreement``: local agreement commits words as finals as soon as two passes agree.

For every final word, delay = stream audio time when its final was emitted - the word's end time (estimated within
its segment). Side by side: offline transcription of the same clips (compute seconds per audio second).

    python -P bench/bench_whisper_streaming.py [--interval 1.0]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from legato.asr.whisper.streaming import StreamingConfig, normalise
from legato.stream.audio_io import read_audio
from legato.stream.frames import TextKind

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "speech"
CHUNK = 1600  # 100 ms


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_mode(rec, stage_cls, audio: torch.Tensor, config) -> tuple[list[float], list[str], float]:
    """Stream one clip through a WhisperStage: (delays of final words, final texts, compute seconds)."""
    from legato.stream.frames import AudioChunk
    from legato.stream.graph import StreamInfo
    from legato.stream.testing import StageHarness

    h = StageHarness(stage_cls(rec, config), StreamInfo("s"))
    delays, finals, pushed = [], [], 0
    t0 = time.perf_counter()

    def take(events, at):
        for e in events:
            if getattr(e, "kind", None) == TextKind.FINAL:
                delays.extend(at - w.end_s for w in e.words)
                finals.append(e.text)

    for i in range(0, audio.shape[0], CHUNK):
        piece = audio[i : i + CHUNK]
        pushed += piece.shape[0]
        take(h.push(AudioChunk(piece[:, None].contiguous(), 16000, i)), pushed / 16000)
    take(h.end(), pushed / 16000)
    return delays, finals, time.perf_counter() - t0


def main() -> None:
    from dataclasses import replace

    from legato.asr.whisper.stage import WhisperRecognizer, WhisperStage

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rec = WhisperRecognizer.default()
    rows = [r for r in csv.DictReader(open(SPEECH / "manifest.tsv"), delimiter="\t") if r["language"] == "en"]
    rec.transcribe(torch.zeros(16000))  # warm-up
    base = StreamingConfig(update_interval_s=args.interval)
    modes = {"agreement": replace(base, utterance_finals=False), "utterance": base}
    stats = {m: {"delays": [], "same": 0, "t": 0.0} for m in modes}
    total_audio, t_offline = 0.0, 0.0
    for r in rows:
        clip = read_audio(str(SPEECH / r["file"]), sample_rate=16000)[0][:, 0]
        audio = torch.cat([clip, torch.zeros(16000)])
        total_audio += audio.shape[0] / 16000
        t0 = time.perf_counter()
        offline = " ".join(s.text for s in rec.transcribe(clip))
        t_offline += time.perf_counter() - t0
        for m, config in modes.items():
            delays, finals, t = run_mode(rec, WhisperStage, audio, config)
            st = stats[m]
            st["delays"] += delays
            st["t"] += t
            st["same"] += [normalise(w) for w in " ".join(finals).split()] == [normalise(w) for w in offline.split()]
    print(f"{len(rows)} English clips + 1 s of silence each, {total_audio:.1f} s of audio, update every {args.interval} s, 100 ms chunks, VAD endpointing")
    print("| finals | words | commit delay median s | p90 s | finals = offline transcript (clips) | compute per audio s |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, st in stats.items():
        d = st["delays"]
        print(f"| {m} | {len(d)} | {statistics.median(d):.2f} | {quantile(d, 0.9):.2f} | {st['same']}/{len(rows)} | {st['t'] / total_audio:.3f} |")
    print(f"offline compute per audio second: {t_offline / total_audio:.3f}")


if __name__ == "__main__":
    main()
