"""Whisper window throughput vs batch size: many streams' windows in one batch vs one at a time.

Weights are seeded random at a real model's dimensions (tiny.en by default), so the
run needs no checkpoint; decoding is capped at --tokens steps per window so every
window does the same work (greedy argmax on random weights would stop anywhere).
Reported per batch size: ms per batch, windows per second, and the speed-up over
decoding the same windows one by one. Correctness first: the batched tokens must
equal the one-by-one tokens.

    python bench/bench_whisper_batch.py --tokenizer PATH/tokenizer.json [--device cuda] [--dtype float16]
"""

from __future__ import annotations

import argparse
import time

import torch

from legato.asr.whisper.decoding import DecodingOptions, decode_window, decode_windows
from legato.asr.whisper.model import Whisper, WhisperDims
from legato.asr.whisper.tokenizer import WhisperTokenizer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = Whisper(WhisperDims()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    model = model.to(args.device, getattr(torch, args.dtype))
    tok = WhisperTokenizer(args.tokenizer)
    opts = DecodingOptions(max_new_tokens=args.tokens)
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), {args.dtype}, torch {torch.__version__}, {args.tokens} tokens/window")
    print(f"{'batch':>6} {'ms/batch':>9} {'windows/s':>10} {'one-by-one windows/s':>21} {'speed-up':>9} {'equal':>6}")
    for b in (int(x) for x in args.batches.split(",")):
        mels = torch.randn(b, 80, 3000, device=args.device) * 0.5
        prompts = [[tok.sot] if i % 2 else [tok.sot_prev] + tok.encode(" earlier text") + [tok.sot] for i in range(b)]
        decode_windows(model, tok, mels, prompts, opts)  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        batched = decode_windows(model, tok, mels, prompts, opts)
        sync(args.device)
        t_batch = time.perf_counter() - t0
        k = min(b, 8)  # time one-by-one on a sample of windows
        t0 = time.perf_counter()
        single = [decode_window(model, tok, mels[i], prompts[i], opts) for i in range(k)]
        sync(args.device)
        t_single = (time.perf_counter() - t0) / k
        equal = sum(a.tokens == s.tokens for a, s in zip(batched, single))
        print(f"{b:>6} {t_batch * 1e3:>9.1f} {b / t_batch:>10.1f} {1 / t_single:>21.1f} {t_single * b / t_batch:>8.1f}x {equal:>3}/{k}")


if __name__ == "__main__":
    main()
