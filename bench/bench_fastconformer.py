"""Cache-aware streaming FastConformer encoder step: NVIDIA NeMo vs legato, side by side on one device.

Same config, same (seeded random) weights, same mel. NeMo steps with
``ConformerEncoder.cache_aware_stream_step`` (its own feeding: 9 mel frames of
pre-encode overlap + 8 (R+1) new ones, ``drop_extra_pre_encoded=2``, caches fed
back every step); legato with ``FastConformerEncoder.stream_step`` on the new
frames only, bare and through ``StatePool`` gather + step + scatter (what the
engine does). Correctness first (40+ steps at B=2, outputs compared every step),
then per batch size: caches filled to steady state (full left context), warm-up,
then every step timed alone (CUDA events; perf_counter on the CPU); p50 / p99.

Device run (H200: Python 3.12, torch 2.11, no network; NeMo 3.0.0 from the carried wheels,
run tool with carry=[".devcarry/nemo_whl"]):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .devcarry/nemo_whl/*.whl && export PYTHONPATH=/tmp/site \
    && mkdir -p /tmp/shim/legato && cp legato/__init__.py /tmp/shim/legato/ \
    && for d in stream asr tts music codecs kernels server clients; do ln -sfn $PWD/$d /tmp/shim/legato/$d; done \
    && export PYTHONPATH=/tmp/shim:/tmp/site \
    && python3 -P bench/bench_fastconformer.py --commit <sha> --out $OUT/bench_fastconformer.json [--dtype bf16]

Local smoke test (CPU, seconds): the same shim, then
``PYTHONPATH=/tmp/shim /tmp/ref-nemo/bin/python -P bench/bench_fastconformer.py --cpu-smoke``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import itertools
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from legato.asr.fastconformer.checkpoint import encoder_state_dict
from legato.asr.fastconformer.config import FastConformerConfig, Lookahead
from legato.asr.fastconformer.encoder import FastConformerEncoder
from legato.stream.cuda_graphs import CapturedStep
from legato.stream.pool import StatePool
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import git_commit, pct, tf32, time_steps  # noqa: E402

FULL = FastConformerConfig(
    feat_in=80, n_layers=17, d_model=512, n_heads=8, subsampling_factor=8, subsampling_conv_channels=256, ff_expansion_factor=4,
    conv_kernel_size=9, conv_norm_type="layer_norm", xscaling=True,
    lookaheads=(Lookahead(70, 13), Lookahead(70, 6), Lookahead(70, 1), Lookahead(70, 0)),
)
SMOKE = FastConformerConfig(
    feat_in=80, n_layers=2, d_model=64, n_heads=4, subsampling_factor=8, subsampling_conv_channels=32, ff_expansion_factor=4,
    conv_kernel_size=9, conv_norm_type="layer_norm", xscaling=True, lookaheads=(Lookahead(16, 1), Lookahead(16, 0)),
)
SIDES = ("nemo", "ours", "ours_pool")
NATIVE_SIDES = ("ours_bf16", "ours_graph")  # with --dtype bf16: ours with bf16 weights and caches (no autocast), eager / CUDA graph
N_INPUTS = 4  # distinct pre-generated chunks, cycled
CHECK_ABORT_REL = 1e-2
SUSTAINED = (
    "sustained real-time streams at batch B = B if p99 <= chunk duration, else min(B, floor(B * chunk_s / p50_s)); "
    "throughput streams = B * chunk_s / p50_s (no latency bound); headline = max over B of sustained"
)


def build(cfg: FastConformerConfig, device: str, std: float, seed: int):
    """NeMo's ConformerEncoder with seeded N(0, std^2) weights (LayerNorm 1 / 0), and ours loaded from its state dict."""
    from nemo.collections.asr.modules import ConformerEncoder

    nemo = ConformerEncoder(
        feat_in=cfg.feat_in, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, subsampling="dw_striding",
        subsampling_factor=cfg.subsampling_factor, subsampling_conv_channels=cfg.subsampling_conv_channels, causal_downsampling=True,
        ff_expansion_factor=cfg.ff_expansion_factor, self_attention_model="rel_pos",
        att_context_size=[[la.left, la.right] for la in cfg.lookaheads], att_context_style="chunked_limited",
        conv_kernel_size=cfg.conv_kernel_size, conv_context_size="causal", conv_norm_type=cfg.conv_norm_type, xscaling=cfg.xscaling,
        dropout=0, dropout_pre_encoder=0, dropout_emb=0, dropout_att=0,
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in nemo.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            else:
                for p in m.parameters(recurse=False):
                    p.copy_(torch.randn(p.shape, generator=g) * std)
    ours = FastConformerEncoder(cfg).eval()
    ours.load_state_dict(encoder_state_dict(nemo.state_dict(), cfg))
    return nemo.to(device), ours.to(device)


def nemo_step(nemo, chunk, length, caches: list, drop: int):
    """One ``cache_aware_stream_step``; the returned caches replace ``caches`` in place (fed back next step)."""
    out, out_len, *caches[:] = nemo.cache_aware_stream_step(
        processed_signal=chunk, processed_signal_length=length, cache_last_channel=caches[0], cache_last_time=caches[1],
        cache_last_channel_len=caches[2], keep_all_outputs=False, drop_extra_pre_encoded=drop,
    )
    return out, out_len


@torch.inference_mode()
def check(nemo, ours, cfg, li: int, device: str, steps: int, amp) -> dict:
    """Stream the same mel through both at B=2; NeMo with its overlap chunks, ours with the new frames only."""
    la, b = cfg.lookaheads[li], 2
    first, later = cfg.first_chunk_mel(la), cfg.chunk_mel(la)
    pre, drop = nemo.streaming_cfg.pre_encode_cache_size[1], nemo.streaming_cfg.drop_extra_pre_encoded
    mel = torch.randn(b, cfg.feat_in, first + later * (steps - 1), generator=torch.Generator().manual_seed(1)).to(device)
    caches, state = list(nemo.get_initial_cache_state(batch_size=b, device=device)), ours.init_state(b, device)
    worst = scale = 0.0
    worst_step, nemo_frames, nemo_widths, i = 0, set(), set(), 0
    for k in range(steps):
        if k == 0:
            chunk, new = mel[:, :, :first], mel[:, :, :first]
        else:
            new = mel[:, :, i : i + later]
            chunk = torch.nn.functional.pad(mel[:, :, max(0, i - pre) : i + later], (max(0, pre - i), 0))  # NeMo's buffer zero-fills
        length = torch.full((b,), chunk.shape[2], dtype=torch.long, device=device)
        with amp():
            y_n, n_len = nemo_step(nemo, chunk, length, caches, 0 if k == 0 else drop)
            y_o, _ = ours.stream_step(new.transpose(1, 2).contiguous(), state, lookahead=li, first=k == 0)
        nemo_frames.add(int(y_n.shape[2]))
        nemo_widths.add(int(chunk.shape[2]))
        assert n_len.tolist() == [y_o.shape[1]] * b, (n_len.tolist(), y_o.shape)
        err = float((y_o.float() - y_n.transpose(1, 2).float()).abs().max())
        if err > worst:
            worst, worst_step = err, k
        scale = max(scale, float(y_n.float().abs().max()))
        i += new.shape[2]
    return {
        "batch": b, "steps": steps, "max_abs_diff": worst, "ref_max_abs": scale, "max_rel_diff": worst / scale, "worst_step": worst_step,
        "nemo_out_frames_per_step": sorted(nemo_frames), "ours_out_frames_per_step": la.chunk_frames,
        "nemo_chunk_mel_frames": sorted(nemo_widths), "ours_chunk_mel_frames": [first, later],
        "nemo_final_cache_len": caches[2].tolist(), "ours_final_cache_len": state.frames.clamp(max=cfg.max_left).tolist(),
        **({"note": "R=0: NeMo's step 1 zero-fills its 9-frame pre-encode cache (1 mel frame came before); known drift, "
                    "tests/fixtures/nemo/NOTES.md"} if la.right == 0 else {}),
    }


class EncoderStep(nn.Module):
    """``stream_step`` in CapturedStep's ``step(x, state)`` form."""

    def __init__(self, enc, li):
        super().__init__()
        self.enc, self.li = enc, li

    def step(self, x, state):
        return self.enc.stream_step(x, state, lookahead=self.li, first=False)[0]


def side_step(side: str, nemo, ours, cfg, li: int, b: int, device: str):
    """A zero-argument steady-state step for one side at batch ``b`` (inputs cycled from N_INPUTS pre-made chunks)."""
    la = cfg.lookaheads[li]
    pre, drop = nemo.streaming_cfg.pre_encode_cache_size[1], nemo.streaming_cfg.drop_extra_pre_encoded
    g = torch.Generator(device=device).manual_seed(b)  # every side gets the same chunks
    chunks = [torch.randn(b, cfg.feat_in, pre + cfg.chunk_mel(la), device=device, generator=g) for _ in range(N_INPUTS)]
    n = itertools.count()
    if side == "nemo":
        caches = list(nemo.get_initial_cache_state(batch_size=b, device=device))
        length = torch.full((b,), chunks[0].shape[2], dtype=torch.long, device=device)
        return lambda: nemo_step(nemo, chunks[next(n) % N_INPUTS], length, caches, drop)
    new = [c[:, :, pre:].transpose(1, 2).contiguous() for c in chunks]  # the same new frames, (B, T, F)
    if side == "ours":
        state = ours.init_state(b, device)
        return lambda: ours.stream_step(new[next(n) % N_INPUTS], state, lookahead=li, first=False)
    if side in NATIVE_SIDES:
        enc = ours.bf16
        new16 = [x.to(torch.bfloat16) for x in new]
        state = enc.init_state(b, device)
        if side == "ours_bf16":
            return lambda: enc.stream_step(new16[next(n) % N_INPUTS], state, lookahead=li, first=False)
        cap = CapturedStep(EncoderStep(enc, li), state, new16[0])
        return lambda: cap(new16[next(n) % N_INPUTS])
    pool, slots = StatePool(ours, b, device), list(range(b))

    def pooled():
        work = pool.gather(slots)
        y = ours.stream_step(new[next(n) % N_INPUTS], work, lookahead=li, first=False)
        pool.scatter(slots, work)
        return y

    return pooled


@torch.inference_mode()
def bench_side(side, nemo, ours, cfg, li, b, device, args, amp) -> dict:
    cuda = device.startswith("cuda")
    la = cfg.lookaheads[li]
    fill = math.ceil(la.left / la.chunk_frames) + 1  # steps until both attend over a full left context
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = None
    try:
        with (contextlib.nullcontext() if side in NATIVE_SIDES else amp()):
            times = time_steps(side_step(side, nemo, ours, cfg, li, b, device), fill + args.warmup, args.iters, cuda)
    except torch.cuda.OutOfMemoryError:
        pass
    gc.collect()  # free the side's state and inputs (also after an OOM) before the next side
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.empty_cache()
    if times is None:
        return {"error": "OOM"}
    chunk_s = la.chunk_frames * cfg.subsampling_factor * 0.01
    p50, p99 = statistics.median(times), pct(times, 99)
    sustained = b if p99 / 1e3 <= chunk_s else min(b, math.floor(b * chunk_s / (p50 / 1e3)))
    out = {
        "p50_ms": p50, "p99_ms": p99, "mean_ms": statistics.fmean(times), "min_ms": min(times), "fill_steps": fill,
        "rt_streams_sustained": sustained, "rt_streams_throughput": b * chunk_s / (p50 / 1e3),
    }
    if cuda:
        out["peak_mib"] = peak
    return out


def table(rows: list[dict], chunk_ms: float, sides) -> str:
    def f(r, side, key, fmt="{:.2f}"):
        v = r.get(side, {"error": "-"})
        return v["error"] if "error" in v else fmt.format(v[key])

    def ratio(r, side):
        return f"{r[f'nemo_over_{side}_p50']:.2f}x" if r.get(f"nemo_over_{side}_p50") else "-"

    head = " | ".join(f"{s} p50 / p99 ms" for s in sides)
    ratios = " | ".join(f"NeMo/{s}" for s in sides[1:])
    lines = [f"| streams (B) | {head} | {ratios} | sustained RT streams {' / '.join(sides)} ({chunk_ms:.0f} ms chunks) |",
             "|---:|" + "---:|" * (2 * len(sides))]
    for r in rows:
        cells = " | ".join(f"{f(r, s, 'p50_ms')} / {f(r, s, 'p99_ms')}" for s in sides)
        rts = " / ".join(f(r, s, "rt_streams_sustained", "{:,}") for s in sides)
        lines.append(f"| {r['batch']} | {cells} | {' | '.join(ratio(r, s) for s in sides[1:])} | {rts} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,4,16,64,256,1024")
    ap.add_argument("--lookahead-ms", type=int, default=80, help="right context R * 80 ms (80 = R 1 = 160 ms chunks)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: both sides under torch.autocast(bfloat16)")
    ap.add_argument("--warmup", type=int, default=10, help="timed-step warm-up, after the cache-filling steps")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--check-steps", type=int, default=None, help="default: max(40, steps to fill the left context + 5)")
    ap.add_argument("--init-std", type=float, default=None, help="weight std (default 0.02; 0.1 with --cpu-smoke)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--commit", default=None, help="git commit to record (git may be missing on the device)")
    ap.add_argument("--out", default="bench_fastconformer.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny config on the CPU, batches 1,2, 3 iters")
    args = ap.parse_args()
    cfg = FULL
    if args.cpu_smoke:
        cfg, args.device, args.batches, args.iters, args.warmup = SMOKE, "cpu", "1,2", 3, 1
    std = args.init_std if args.init_std is not None else (0.1 if args.cpu_smoke else 0.02)
    frame_ms = cfg.subsampling_factor * 10
    right, rem = divmod(args.lookahead_ms, frame_ms)
    li = next((i for i, la in enumerate(cfg.lookaheads) if la.right == right), None)
    if rem or li is None:
        ap.error(f"--lookahead-ms must be R * {frame_ms} with R in {[la.right for la in cfg.lookaheads]}")
    la, cuda = cfg.lookaheads[li], args.device.startswith("cuda")
    chunk_ms = la.chunk_frames * frame_ms
    check_steps = args.check_steps or max(40, math.ceil(la.left / la.chunk_frames) + 5)
    amp = (lambda: torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)) if args.dtype == "bf16" else contextlib.nullcontext
    torch.manual_seed(args.seed)

    import nemo as nemo_pkg

    nemo, ours = build(cfg, args.device, std, args.seed)
    nemo.set_default_att_context_size([la.left, la.right])
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": args.commit or git_commit(), "torch": torch.__version__, "nemo": nemo_pkg.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(args.device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "cuda": torch.version.cuda, "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "config": {**{k: v for k, v in vars(cfg).items() if k != "lookaheads"},
                   "att_context_size": [[x.left, x.right] for x in cfg.lookaheads]},
        "lookahead": {"index": li, "left": la.left, "right": la.right, "lookahead_ms": args.lookahead_ms, "chunk_ms": chunk_ms},
        "nemo_streaming_cfg": {k: getattr(nemo.streaming_cfg, k) for k in ("chunk_size", "shift_size", "pre_encode_cache_size",
                               "drop_extra_pre_encoded", "last_channel_cache_size", "cache_drop_size", "valid_out_len")},
        "init_std": std, "seed": args.seed, "warmup": args.warmup, "iters": args.iters, "definitions": SUSTAINED,
    }
    print(f"{info['device']}  torch {info['torch']}  nemo {info['nemo']}  {args.dtype}  commit {info['commit']}  {info['date']}")
    print(f"config: {cfg.n_layers} layers, d_model {cfg.d_model}, lookahead [{la.left},{la.right}] = {args.lookahead_ms} ms, {chunk_ms} ms chunks")
    print(f"NeMo streaming_cfg: {info['nemo_streaming_cfg']}")

    # 1. correctness (on CUDA twice: TF32 off, then torch's default flags, which time the steps)
    plain = contextlib.nullcontext
    runs = [("fp32_strict_no_tf32", False, plain), ("fp32_default_flags", None, plain)] if cuda else [("fp32", None, plain)]
    if args.dtype == "bf16":
        runs.append(("bf16_autocast", None, amp))
    checks = {}
    for name, tf, ctx in runs:
        with tf32(tf) if tf is not None else plain():
            checks[name] = c = check(nemo, ours, cfg, li, args.device, check_steps, ctx)
        print(
            f"check {name}: {c['steps']} steps B=2, max |ours - nemo| = {c['max_abs_diff']:.2e} (rel {c['max_rel_diff']:.2e}, "
            f"step {c['worst_step']}); NeMo chunks {c['nemo_chunk_mel_frames']} mel -> {c['nemo_out_frames_per_step']} frames, "
            f"ours {c['ours_chunk_mel_frames']} -> {c['ours_out_frames_per_step']}"
        )
    result = {**info, "correctness": checks, "rows": []}
    if checks[runs[0][0]]["max_rel_diff"] > CHECK_ABORT_REL:
        print(f"ABORT: relative difference {checks[runs[0][0]]['max_rel_diff']:.2e} > {CHECK_ABORT_REL}", file=sys.stderr)
        Path(args.out).write_text(json.dumps(result, indent=1))
        return 1

    # 2. timing
    sides = SIDES + (NATIVE_SIDES if args.dtype == "bf16" and cuda else ())
    if args.dtype == "bf16" and cuda:
        enc16 = FastConformerEncoder(cfg).to(args.device).eval()
        enc16.load_state_dict(ours.state_dict())
        object.__setattr__(ours, "bf16", enc16.to(torch.bfloat16))  # a plain attribute, not a submodule
    for b in (int(x) for x in args.batches.split(",")):
        row = {"batch": b}
        for side in sides:
            row[side] = r = bench_side(side, nemo, ours, cfg, li, b, args.device, args, amp)
            msg = "OOM" if "error" in r else f"p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms  sustained RT {r['rt_streams_sustained']:,}"
            print(f"B={b:5d} {side:9s} {msg}", flush=True)
        for side in sides[1:]:
            if "p50_ms" in row["nemo"] and "p50_ms" in row[side]:
                row[f"nemo_over_{side}_p50"] = row["nemo"]["p50_ms"] / row[side]["p50_ms"]
        result["rows"].append(row)
    result["headline_rt_streams"] = {}
    for side in sides:
        ok = [(r[side]["rt_streams_sustained"], r["batch"]) for r in result["rows"] if "error" not in r[side]]
        streams, batch = max(ok, default=(0, None))
        result["headline_rt_streams"][side] = {"streams": streams, "batch": batch}
    result["markdown"] = md = table(result["rows"], chunk_ms, sides)
    print(f"\n{md}\n\nDefinition: {SUSTAINED}.")
    heads = ", ".join(f"{s} {v['streams']:,} (B={v['batch']})" for s, v in result["headline_rt_streams"].items())
    print(f"Headline, max over B of sustained real-time streams: {heads}")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
