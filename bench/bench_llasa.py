"""Llasa serving benchmark: time to first audio and concurrent real-time streams, ours vs transformers ``generate``.

Model: the Llama-3.2-1B shape Llasa uses (hidden 2048, 16 layers, 32 heads / 8 KV heads of 64, SwiGLU 8192, Llama 3
rope scaling, tied embeddings, vocab 193,800 = 128,256 text + 8 markers + 65,536 speech tokens), seeded random
weights in bf16, built once by transformers' ``LlamaForCausalLM`` and loaded into ours by state dict (same keys).
Fixed-length generation: every request has a 64-token prompt and generates exactly ``--tokens`` tokens (stop
tokens off), sampled as Llasa's call (temperature 0.8, top-k 50). The XCodec2 decode is not timed (the LM
dominates); "first audio" is when a request's first 10 tokens (0.2 s of speech, our first codec group) exist.

Correctness first (bf16 rounding would blur it): the same weights in fp32 with TF32 off, 32 greedy steps of one
prompt decoded by ours batched beside two other requests vs ``generate``; the ids must agree (prompt logits max
diff reported).

Timing, for N concurrent requests all arriving at once (N = 1 ... 512):
* transformers: one ``generate`` call on the batch of N (its static batching; sdpa attention, dynamic cache); a
  logits processor stamps each decode step, so the 10th step's time is its first-audio time (generous to it: it
  returns nothing before the end).
* ours: N ``ArJob`` s on one ``ArStepper`` (prefill chunked under the token budget, decode steps batched and
  replayed from CUDA graphs, captured before timing).
Per N: first audio p50/p99, tokens/s per stream (p50) and in aggregate; a stream is real time at >= 50 tokens/s,
so the concurrent real-time streams are N when the slowest stream keeps >= 50 tokens/s.

Device run: transformers 5.24 and its pure-Python dependencies carried as wheels (``.devcarry/hf_whl``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import pct  # noqa: E402

FULL = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, vocab=193800)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab=1000)
PROMPT = 64
FIRST_GROUP = 10
TOKENS_PER_S = 50


def hf_config(s: dict) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": s["vocab"], "hidden_size": s["hidden_size"],
            "intermediate_size": s["intermediate_size"], "num_hidden_layers": s["num_hidden_layers"],
            "num_attention_heads": s["num_attention_heads"], "num_key_value_heads": s["num_key_value_heads"],
            "head_dim": s["hidden_size"] // s["num_attention_heads"], "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192},
            "max_position_embeddings": 131072, "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}


def build(s: dict, device: str, seed: int):
    from transformers import LlamaConfig as HfConfig, LlamaForCausalLM

    from legato.tts.llasa.llama import Llama, LlamaConfig

    conf = hf_config(s)
    torch.manual_seed(seed)
    theirs = LlamaForCausalLM(HfConfig(**conf)).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 1 / math.sqrt(p.shape[-1]))
    ours = Llama(LlamaConfig.from_hf(conf))
    state = {k: v for k, v in theirs.state_dict().items() if k != "lm_head.weight"}
    ours.load_state_dict(state, strict=False)
    return theirs.to(device), ours.to(device).eval()


@torch.inference_mode()
def check(theirs, ours, device: str, vocab: int) -> dict:
    from legato.stream.autoregressive import ArJob, ArStepper
    from legato.tts.llasa.sampling import SamplingParams, sample

    torch.backends.cuda.matmul.allow_tf32 = False
    theirs.float(), ours.float()
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, vocab, (PROMPT,), generator=g).tolist() for _ in range(3)]
    ref = theirs.generate(torch.tensor([prompts[0]], device=device), max_new_tokens=32, do_sample=False, min_new_tokens=32)[0, PROMPT:].tolist()
    stepper = ArStepper(ours, ours.new_cache(4, 256), sample, token_budget=40)
    jobs = [ArJob(p, SamplingParams(temperature=0), frozenset(), 32) for p in prompts]
    while not all(j.done for j in jobs):
        stepper.step(jobs)
    logits_t = theirs(torch.tensor([prompts[0]], device=device)).logits[0, -1]
    logits_o = ours.step(ours.pack([prompts[0]], [0], [0]), ours.new_cache(1, 128))[0]
    out = {"greedy_ids_equal": jobs[0].generated == ref, "first_diff_step": next((i for i, (a, b) in enumerate(zip(jobs[0].generated, ref)) if a != b), None),
           "prompt_logits_max_abs_diff": float((logits_t - logits_o).abs().max()), "logit_scale": float(logits_t.abs().max())}
    theirs.to(torch.bfloat16), ours.to(torch.bfloat16)
    torch.backends.cuda.matmul.allow_tf32 = True
    return out


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def run_theirs(theirs, prompts, tokens: int, device: str) -> dict:
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            sync(device)
            stamps.append(time.perf_counter())
            return scores

    ids = torch.tensor(prompts, device=device)
    sync(device)
    t0 = time.perf_counter()
    theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True,
                    temperature=0.8, top_k=50, top_p=1.0, logits_processor=LogitsProcessorList([Stamp()]), pad_token_id=2)
    sync(device)
    total = time.perf_counter() - t0
    first = stamps[FIRST_GROUP - 1] - t0  # the 10th token is drawn after this processor call
    return {"first": [first] * len(prompts), "rates": [tokens / total] * len(prompts), "wall": total}


@torch.inference_mode()
def run_ours(ours, prompts, tokens: int, device: str, budget: int) -> dict:
    from legato.stream.autoregressive import ArJob, ArStepper
    from legato.tts.llasa.sampling import SamplingParams, sample

    stepper = ArStepper(ours, ours.new_cache(len(prompts), PROMPT + tokens + 1), sample, token_budget=budget)
    if stepper.graphs is not None:
        stepper.graphs.prepare()  # capture every bucket before timing, as a server does at start-up
    jobs = [ArJob(p, SamplingParams(temperature=0.8, top_k=50, seed=i), frozenset(), tokens) for i, p in enumerate(prompts)]
    first: dict[int, float] = {}
    sync(device)
    t0 = time.perf_counter()
    while not all(j.done for j in jobs):
        stepper.step(jobs)
        now = None
        for i, j in enumerate(jobs):
            if i not in first and len(j.generated) >= FIRST_GROUP:
                now = now or time.perf_counter()
                first[i] = now - t0
    sync(device)
    total = time.perf_counter() - t0
    return {"first": list(first.values()), "rates": [tokens / total] * len(prompts), "wall": total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,8,64,256,512")
    ap.add_argument("--tokens", type=int, default=250, help="tokens per request (5 s of speech)")
    ap.add_argument("--budget", type=int, default=2048, help="our token budget per fused step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-ref", action="store_true", help="skip transformers' timing (still builds the weights with it)")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", default="bench_llasa.json")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args()
    shape = SMOKE if args.cpu_smoke else FULL
    if args.cpu_smoke:
        args.device, args.concurrency, args.tokens = "cpu", "1,4", 20
    import transformers

    theirs, ours = build(shape, args.device, 0)
    info = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "commit": args.commit, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu", "shape": shape,
            "params_m": sum(p.numel() for p in ours.parameters()) / 1e6, "tokens": args.tokens, "prompt": PROMPT}
    info["check_fp32"] = check(theirs, ours, args.device, shape["vocab"])
    print(json.dumps(info), flush=True)
    if not info["check_fp32"]["greedy_ids_equal"]:
        print("ABORT: greedy ids differ", file=sys.stderr)
        Path(args.out).write_text(json.dumps(info, indent=1))
        return 1
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    theirs.to(dtype), ours.to(dtype)
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in [int(x) for x in args.concurrency.split(",")]:
        prompts = [torch.randint(3, shape["vocab"], (PROMPT,), generator=g).tolist() for _ in range(n)]
        sides = [("ours", lambda: run_ours(ours, prompts, args.tokens, args.device, args.budget))]
        if not args.no_ref:
            sides.append(("transformers generate", lambda: run_theirs(theirs, prompts, args.tokens, args.device)))
        for side, fn in sides:
            try:
                if n == int(args.concurrency.split(",")[0]):
                    fn()  # warm-up
                r = fn()
            except torch.OutOfMemoryError:
                print(f"{side} N={n}: out of memory", flush=True)
                continue
            rate = statistics.median(r["rates"])
            row = {"side": side, "requests": n, "first_audio_p50_ms": statistics.median(r["first"]) * 1e3,
                   "first_audio_p99_ms": pct(r["first"], 99) * 1e3, "tokens_per_s_per_stream": rate, "aggregate_tokens_per_s": n * args.tokens / r["wall"],
                   "all_real_time": min(r["rates"]) >= TOKENS_PER_S}
            rows.append(row)
            print(row, flush=True)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    info["rows"] = rows
    Path(args.out).write_text(json.dumps(info, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
