"""Streaming Paraformer benchmark: step latency and concurrent real-time streams, ours vs FunASR's streaming inference.

Model: the shape of FunASR's ``paraformer-zh-streaming`` (SANMEncoderChunkOpt d 512, 4 heads, FF 2048, 50 blocks,
kernel 11; ParaformerSANMDecoder 16 blocks, FF 2048, causal FSMN; CifPredictorV2; vocab 8404), seeded random
weights built by FunASR's own classes (``funasr.register.tables``) and copied into ours through our loader's key
names; the CIF output layer is calibrated so about a quarter of a token fires per frame (as in the parity
fixtures), so the decoder runs on most steps. Chunk config [0, 10, 5] (600 ms per step), look-back 4 / 1.
Inputs: random LFR features (560 dims, 10 per step); the front-end is not timed on either side.

Correctness first, in the same run: one stream, 12 steps, FunASR's ``encode_chunk`` -> ``calc_predictor_chunk`` ->
``cal_decoder_with_predictor_chunk`` vs our ``StreamingParaformer.step``: encoder outputs (max relative diff) and
token ids per step, fp32 with TF32 off. Abort above 1e-3.

Timing (CUDA events, warm-up, fp32 with TF32 matmuls on both sides):
* FunASR: its cache is one stream (``init_cache`` hard-wires batch 1), so a GPU serves streams one call at a time:
  per-step latency of ``generate_chunk`` (what ``AutoModel.generate`` runs per 600 ms chunk) -> real-time streams
  = 0.6 s / p50 step.
* Ours: one batched step for B streams at once (B = 1 ... 4096), straight on a state of batch B and through the
  state pool's gather/scatter as ``ParaformerStage`` runs it. Real-time streams = the largest B whose p99 step
  fits in 600 ms, and B x 0.6 s / p50 step (sustained).

Device run (H200, Python 3.12, torch 2.11, no network; FunASR's wheel carried, its unused imports stubbed by
``bench/funasr_stubs.py``): see docs/PERFORMANCE.md for the exact line.
Local smoke test: ``--cpu-smoke`` (tiny config, CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import pct, time_steps  # noqa: E402

FULL = dict(d=512, heads=4, ff=2048, enc=50, dec=16, vocab=8404)
SMOKE = dict(d=64, heads=4, ff=128, enc=3, dec=2, vocab=117)
CHUNK = [0, 10, 5]
ENC_LOOK_BACK, DEC_LOOK_BACK = 4, 1
STEP_S = 0.6
CHECK_ABORT_REL = 1e-3


def funasr_config(s: dict) -> dict:
    return {
        "model": "ParaformerStreaming",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True, "predictor_weight": 1.0,
                       "predictor_bias": 1, "sampling_ratio": 0.75},
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {"output_size": s["d"], "attention_heads": s["heads"], "linear_units": s["ff"], "num_blocks": s["enc"],
                         "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1, "input_layer": "pe_online",
                         "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
                         "selfattention_layer_type": "sanm", "chunk_size": [12, 15], "stride": [8, 10], "pad_left": [0, 0],
                         "encoder_att_look_back_factor": [4, 4], "decoder_att_look_back_factor": [1, 1]},
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {"attention_heads": s["heads"], "linear_units": s["ff"], "num_blocks": s["dec"], "dropout_rate": 0.1,
                         "positional_dropout_rate": 0.1, "self_attention_dropout_rate": 0.1, "src_attention_dropout_rate": 0.1,
                         "att_layer_num": s["dec"], "kernel_size": 11, "sanm_shfit": 5},
        "predictor": "CifPredictorV2",
        "predictor_conf": {"idim": s["d"], "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45},
        "frontend": "WavFrontendOnline",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 7, "lfr_n": 6},
        "input_size": 560,
    }


def build_theirs(conf: dict, vocab: int, device: str, seed: int):
    from funasr.register import tables
    import funasr.models.paraformer_streaming.model  # noqa: F401 - registers the classes

    torch.manual_seed(seed)
    kwargs = dict(conf.get("model_conf", {}))
    kwargs.update(conf, vocab_size=vocab)
    model = tables.model_classes.get(conf["model"])(**kwargs)
    with torch.no_grad():  # FunASR's default init leaves LayerNorms at 1/0; small random weights keep activations sane
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 1 / math.sqrt(p.shape[-1] if "fsmn" not in name else p.shape[-1] * 4))
    return model.to(device).eval()


def build_ours(theirs, conf: dict, vocab: int, device: str):
    from legato.asr.paraformer.config import ParaformerConfig
    from legato.asr.paraformer.loader import UNUSED_KEYS
    from legato.asr.paraformer.model import Paraformer

    model = Paraformer(ParaformerConfig.from_funasr(conf, vocab))
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith(UNUSED_KEYS)}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


@torch.inference_mode()
def calibrate(ours, theirs, feats: torch.Tensor) -> float:
    """cif_output so that z has std 1.5 and sigmoid(z) averages 0.25 over one stream's windows (both models)."""
    from legato.asr.paraformer.streaming import ChunkConfig, StreamingParaformer

    sp = StreamingParaformer(ours, ChunkConfig(*CHUNK, ENC_LOOK_BACK, DEC_LOOK_BACK))
    state = sp.init_state(1)
    hs = []
    p = ours.predictor
    for k in range(feats.shape[1] // CHUNK[1]):
        hidden = sp._encode(feats[:, k * CHUNK[1] : (k + 1) * CHUNK[1]], state)
        hs.append(torch.relu(p.cif_conv1d(torch.nn.functional.pad(hidden.transpose(1, 2), (1, 1)))).transpose(1, 2)[0])
    h = torch.cat(hs)
    w = p.cif_output.weight
    z0 = (h @ w.t())[:, 0]
    w.mul_(1.5 / float(z0.std()))
    z0 = (h @ w.t())[:, 0].double()
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(torch.sigmoid(z0 + mid).mean()) < 0.25 else (lo, mid)
    p.cif_output.bias.fill_(0.5 * (lo + hi))
    theirs.predictor.cif_output.weight.copy_(w)
    theirs.predictor.cif_output.bias.copy_(p.cif_output.bias)
    return float(torch.sigmoid(z0 + 0.5 * (lo + hi)).mean())


class _Tokens:
    def ids2tokens(self, ids):
        return [str(i) for i in ids]


def their_cache(theirs, conf):
    return theirs.init_cache({}, chunk_size=CHUNK, encoder_chunk_look_back=ENC_LOOK_BACK, decoder_chunk_look_back=DEC_LOOK_BACK,
                             encoder_conf=conf["encoder_conf"], frontend_conf=conf["frontend_conf"])


def their_cache_to(cache, device):
    for part in ("encoder",):
        for k, v in cache[part].items():
            if isinstance(v, torch.Tensor):
                cache[part][k] = v.to(device)
    return cache


@torch.inference_mode()
def their_step(theirs, feats, cache, device, final=False):
    """FunASR's generate_chunk on one stream's features (what AutoModel.generate runs per chunk, after the front-end)."""
    return theirs.generate_chunk(feats, torch.tensor([feats.shape[1]]), key=["k"], tokenizer=_Tokens(), cache=cache,
                                 is_final=final, device=device)


@torch.inference_mode()
def check(ours, theirs, conf, feats, device) -> dict:
    from legato.asr.paraformer.streaming import ChunkConfig, StreamingParaformer

    sp = StreamingParaformer(ours, ChunkConfig(*CHUNK, ENC_LOOK_BACK, DEC_LOOK_BACK))
    state = sp.init_state(1)
    cache = their_cache_to(their_cache(theirs, conf), device)
    worst, same, tokens = 0.0, True, 0
    for k in range(feats.shape[1] // CHUNK[1]):
        x = feats[:, k * CHUNK[1] : (k + 1) * CHUNK[1]]
        enc, _ = theirs.encode_chunk(x.clone(), torch.tensor([x.shape[1]]), cache=cache, is_final=False)
        out = sp.step(x, state)
        worst = max(worst, float((out.encoder - enc).abs().max() / enc.abs().max()))
        pred = theirs.calc_predictor_chunk(enc, torch.tensor([enc.shape[1]]), cache=cache, is_final=False)
        n = int(pred[1].round().long().max())
        ids = []
        if n >= 1:
            dec = theirs.cal_decoder_with_predictor_chunk(enc, torch.tensor([enc.shape[1]]), pred[0], pred[1].round().long(), cache=cache)[0]
            ids = [i for i in dec[0, :n].argmax(-1).tolist() if i not in (0, 1, 2)]
            worst = max(worst, float((out.logits[0, :n].log_softmax(-1) - dec[0, :n]).abs().max() / dec[0, :n].abs().max()))
        same &= ids == out.ids[0]
        tokens += len(ids)
    return {"max_rel_diff": worst, "token_ids_equal": same, "tokens": tokens, "steps": feats.shape[1] // CHUNK[1]}


def time_direct(sp, x, b, steps, warmup, cuda):
    state = sp.init_state(b)
    return time_steps(lambda: sp.step(x, state), warmup, steps, cuda)


def time_pooled(sp, x, b, device, steps, warmup, cuda):
    """As ParaformerStage runs a step: gather the slots' rows, step, scatter them back."""
    from legato.stream.pool import StatePool

    if cuda:
        torch.cuda.empty_cache()
    pool = StatePool(sp, b, device)
    slots = [pool.acquire() for _ in range(b)]

    def pooled():
        work = pool.gather(slots)
        sp.step(x, work)
        pool.scatter(slots, work)

    return time_steps(pooled, warmup, steps, cuda)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8,64,256,1024,2048,4096")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per point")
    ap.add_argument("--warmup", type=int, default=6, help="untimed steps first (fills the look-back caches)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", default="bench_paraformer.json")
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--stub-missing", action="store_true", help="stub FunASR's unused imports (bench/funasr_stubs.py), for machines without them")
    args = ap.parse_args()
    shape = SMOKE if args.cpu_smoke else FULL
    if args.cpu_smoke:
        args.device, args.batches, args.steps, args.warmup = "cpu", "1,4", 3, 2
    cuda = args.device.startswith("cuda")
    if args.stub_missing:
        import funasr_stubs

        funasr_stubs.install()
    import funasr

    from legato.asr.paraformer.streaming import ChunkConfig, StreamingParaformer

    conf = funasr_config(shape)
    theirs = build_theirs(conf, shape["vocab"], args.device, args.seed)
    ours = build_ours(theirs, conf, shape["vocab"], args.device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    feats = torch.randn(1, CHUNK[1] * 12, 560, generator=gen).to(args.device)
    info = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "commit": args.commit, "torch": torch.__version__,
            "funasr": getattr(funasr, "__version__", None), "python": platform.python_version(),
            "device": torch.cuda.get_device_name(args.device) if cuda else "cpu", "shape": shape, "chunk": CHUNK,
            "params_m": sum(p.numel() for p in ours.parameters()) / 1e6}
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    info["mean_alpha"] = calibrate(ours, theirs, feats)
    info["check_fp32"] = check(ours, theirs, conf, feats, args.device)
    print(json.dumps(info), flush=True)
    if info["check_fp32"]["max_rel_diff"] > CHECK_ABORT_REL or not info["check_fp32"]["token_ids_equal"]:
        print("ABORT: ours and FunASR differ", file=sys.stderr)
        Path(args.out).write_text(json.dumps(info, indent=1))
        return 1
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows = []
    # FunASR: one stream per call
    cache = their_cache_to(their_cache(theirs, conf), args.device)
    k = [0]

    def theirs_step():
        x = feats[:, (k[0] % 12) * CHUNK[1] : (k[0] % 12 + 1) * CHUNK[1]]
        k[0] += 1
        their_step(theirs, x, cache, args.device)

    t = time_steps(theirs_step, args.warmup, args.steps * 2, cuda)  # milliseconds
    rows.append({"side": "funasr generate_chunk (1 stream per call)", "streams": 1, "p50_ms": statistics.median(t),
                 "p99_ms": pct(t, 99), "rt_streams_sustained": STEP_S * 1e3 / statistics.median(t)})
    print(rows[-1], flush=True)
    sp = StreamingParaformer(ours, ChunkConfig(*CHUNK, ENC_LOOK_BACK, DEC_LOOK_BACK))
    for b in [int(x) for x in args.batches.split(",")]:
        try:
            x = feats[:, : CHUNK[1]].expand(b, -1, -1).contiguous() + 0.1 * torch.randn(b, CHUNK[1], 560, device=args.device)
            t = time_direct(sp, x, b, args.steps, args.warmup, cuda)
            tp = time_pooled(sp, x, b, args.device, args.steps, args.warmup, cuda)
        except torch.OutOfMemoryError:
            print(f"B={b}: out of memory", flush=True)
            break
        for side, ts in (("ours, batched step", t), ("ours, through the state pool", tp)):
            rows.append({"side": side, "streams": b, "p50_ms": statistics.median(ts), "p99_ms": pct(ts, 99),
                         "rt_streams_sustained": b * STEP_S * 1e3 / statistics.median(ts), "fits_600ms_p99": pct(ts, 99) <= STEP_S * 1e3})
            print(rows[-1], flush=True)
        if cuda:
            torch.cuda.empty_cache()
    info["rows"] = rows
    Path(args.out).write_text(json.dumps(info, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
