"""Intelligibility of the embedded voice: synthesise sentences with ours, transcribe them with our Whisper tiny.en, WER.

Each sentence of tests/fixtures/tts/vits/roundtrip_sentences.txt (our own, 24) is synthesised alone by the
``joe`` voice (its inference defaults: noise_scale 0.667, noise_w 0.8; seeded), resampled to 16 kHz and
transcribed by the embedded Whisper tiny.en; hypothesis and sentence are normalised by Whisper's English
normaliser (the ``whisper-normalizer`` package), and WER = total word edits / total reference words.
Sentences are scored one by one because the normaliser would join numbers across a sentence boundary.

    .venv/bin/python -P bench/roundtrip_vits.py [--sentences N] [--seed S] [--out roundtrip.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

SENTENCES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tts" / "vits" / "roundtrip_sentences.txt"


def edits(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def roundtrip(sentences: list[str], voice, recognizer, seed: int = 0) -> dict:
    """Per sentence: what Whisper heard, the normalised words and edits; and the pooled WER."""
    from whisper_normalizer.english import EnglishTextNormalizer

    from legato.stream.resample import Resampler
    from legato.tts.voice import SynthesisRequest

    norm = EnglishTextNormalizer()
    to_16k = Resampler(voice.sample_rate, 16000)
    voice.seed = seed
    rows, total_edits, total_words = [], 0, 0
    for text in sentences:
        audio = voice.synthesize(SynthesisRequest(text))
        heard = " ".join(s.text.strip() for s in recognizer.transcribe(to_16k(audio[:, None])[:, 0].contiguous()))
        ref, hyp = norm(text).split(), norm(heard).split()
        e = edits(hyp, ref)
        total_edits, total_words = total_edits + e, total_words + len(ref)
        rows.append({"text": text, "heard": heard, "edits": e, "words": len(ref), "audio_s": audio.shape[0] / voice.sample_rate})
    return {"wer": total_edits / max(total_words, 1), "edits": total_edits, "words": total_words, "sentences": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=0, help="only the first N (default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from legato.asr.whisper.stage import WhisperRecognizer
    from legato.tts.voices import default_voices

    voices, name = default_voices()
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    sentences = sentences[: args.sentences] if args.sentences else sentences
    t0 = time.perf_counter()
    with torch.inference_mode():
        result = roundtrip(sentences, voices[name], WhisperRecognizer.default(), args.seed)
    for r in result["sentences"]:
        print(f"{r['edits']:2d}/{r['words']:2d}  {r['text']}  ->  {r['heard']}")
    print(f"WER {100 * result['wer']:.2f} % ({result['edits']} edits / {result['words']} words, {len(sentences)} sentences, "
          f"seed {args.seed}, {time.perf_counter() - t0:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
