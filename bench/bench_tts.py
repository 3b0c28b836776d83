"""TTS serving benchmark: time to first audio (TTFA) and real-time factor at 1, 8, 64 concurrent streams.

Two families at official sizes with seeded random weights (nothing downloaded):

* FastSpeech 2 (ming024 LJSpeech model.yaml: 4/6 layers, hidden 256, variance 256, 256 bins) + HiFi-GAN V1
  (512 channels, rates 8 8 2 2), our ``FastSpeech2Voice`` (exact streamed vocoding, 32-frame chunks). Text
  goes through the voice's own front-end (normalise, sentences, lexicon) with a tiny in-script lexicon that
  covers the benchmark sentence; the g2p is a stub that fails on any word the lexicon lacks. The duration
  predictor's output layer is set to about 6 frames per phoneme, so random weights give speech-like lengths.
* F5-TTS v1 Base (dim 1024, depth 22, heads 16, ff_mult 2, text_dim 512, conv_layers 4, a synthetic
  2545-symbol vocab, space first) + Vocos 24 kHz (dim 512, 1536, 8 layers). Ours: ``F5Voice`` on the engine
  (its route ``VoiceStage | ResampleStage``, as ``legato serve`` runs it: every request's chunk jobs advance
  together, one DiT call per round). Reference: the f5-tts package's ``CFM.sample``
  (what ``infer_batch_process`` calls: its pinyin/char tokens, its mel of the reference audio, the whole text
  in one job, ``use_epss=False`` so both sides use the same uniform+sway grid) + Vocos decode, one request per
  thread (its inference is not batched across requests; its DiT keeps a thread-local text cache). Both sides
  vocode with OUR Vocos (same weights); the comparison that matters is the DiT sampling. Same DiT weights:
  ours drawn from a seed and copied into their DiT through our loader's key table (``tts/f5/loader.py``).
  Everything runs in fp32; ``--precision tf32`` (default) lets matmuls and convs of both families and both
  sides use TF32 while timing. (f5-tts's own ``load_model`` picks fp16 on CUDA, but our F5DiT does not run in
  half precision at this commit: TextEmbedding adds an fp32 sinusoid table, so the first fp16 conv fails.)

Correctness first: F5 at full size, same mel / text / injected noise (their y0): our ``sample`` and our
``FlowSolver`` job path vs their ``CFM.sample``, fp32 with TF32 off (abort above 1e-3 relative), then with
TF32 on (reported). FastSpeech 2: the streamed voice output vs whole-mel vocoding.

Timing: for N in --concurrency, bursts of N requests (N threads released together by a barrier; at least
--min-requests requests per N); per request TTFA (burst start -> first chunk on the CPU) and total time;
per-request RTF = total / audio seconds; aggregate x-real-time = audio seconds produced / burst wall time.
Percentiles nearest-rank (p99 of 20 samples is the slowest).

Device run (H200: Python 3.12, torch 2.11, no network; f5-tts and its import chain from carried wheels,
run tool with carry=[".devcarry/f5_whl"]), one line:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/f5_whl/*.whl && mkdir -p /tmp/shim/legato && cp legato/__init__.py /tmp/shim/legato/ && for d in stream asr tts music codecs kernels server clients; do ln -sfn $PWD/$d /tmp/shim/legato/$d; done && export PYTHONPATH=/tmp/shim:/tmp/site PYTHONUNBUFFERED=1 && python3 -P bench/bench_tts.py --commit <sha> --out $OUT/bench_tts.json --md $OUT/bench_tts.md 2>&1 | tee $OUT/bench_tts.log

Local smoke test (CPU, seconds): the same shim, then
``PYTHONPATH=/tmp/shim /tmp/bench-tts-venv/bin/python -P bench/bench_tts.py --cpu-smoke``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import importlib.util
import json
import math
import platform
import statistics
import sys
import threading
import time
import types
from pathlib import Path

import torch
from legato.codecs.hifigan import HifiGan, HifiGanConfig
from legato.codecs.vocos import Vocos, VocosConfig
from legato.stream.engine import Engine
from legato.stream.frames import AudioChunk, ErrorEvent, SpeechRequest
from legato.tts.f5.config import F5Config
from legato.tts.f5.dit import F5DiT
from legato.tts.f5.duration import (
    normalise_reference,
    prompt_text,
    reference_frames,
    total_frames,
)
from legato.tts.f5.loader import map_key
from legato.tts.f5.sampling import sample as our_sample
from legato.tts.f5.vocab import Vocab
from legato.tts.f5.voice import CFG_STRENGTH, SWAY, F5Voice
from legato.tts.fastspeech2.config import FastSpeech2Config
from legato.tts.fastspeech2.model import FastSpeech2
from legato.tts.fastspeech2.voice import FastSpeech2Voice, split_sentences
from legato.tts.stage import voice_route
from legato.tts.text.f5_tokens import text_to_ids as f5_text_to_ids
from legato.tts.text.normalize import normalize_english
from legato.tts.voice import SynthesisRequest
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from common import git_commit, pct, tf32  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog, then runs into the quiet forest to rest."  # 16 words
REF_TEXT = "Some call me nature, others call me mother nature."
REF_SECONDS = 3.0
LEXICON = {  # CMUdict pronunciations of every word of SENTENCE
    "the": "DH AH0", "quick": "K W IH1 K", "brown": "B R AW1 N", "fox": "F AA1 K S", "jumps": "JH AH1 M P S",
    "over": "OW1 V ER0", "lazy": "L EY1 Z IY0", "dog": "D AO1 G", "then": "DH EH1 N", "runs": "R AH1 N Z",
    "into": "IH0 N T UW1", "quiet": "K W AY1 AH0 T", "forest": "F AO1 R AH0 S T", "to": "T UW1", "rest": "R EH1 S T",
}
FRAMES_PER_PHONE = 6  # FastSpeech 2 random-weight duration target (LJSpeech averages about 6-7)
N_VOCAB = 2545  # official Emilia vocab.txt lines

FS2_FULL, FS2_SMOKE = FastSpeech2Config(), FastSpeech2Config(
    encoder_layers=1, decoder_layers=1, encoder_hidden=32, decoder_hidden=32, conv_filter_size=64, variance_filter_size=32,
    n_bins=16, postnet_channels=32)
HIFI_FULL, HIFI_SMOKE = HifiGanConfig(), HifiGanConfig(upsample_initial_channel=32, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3, 5),))
F5_FULL = F5Config(text_num_embeds=N_VOCAB)
F5_SMOKE = F5Config(dim=64, depth=2, heads=2, dim_head=32, ff_mult=2, text_dim=32, conv_layers=2, text_num_embeds=N_VOCAB)
VOCOS_FULL, VOCOS_SMOKE = VocosConfig(), VocosConfig(dim=64, intermediate_dim=128, num_layers=2)
CHECK_ABORT_REL = 1e-3


# ------------------------------------------------------------------ models

def randomize(module: torch.nn.Module, seed: int) -> None:
    """Weights N(0, 1/fan_in); norm gains 1 + 0.1 N; other 1-D params 0.1 N (as tests/fixtures/make_f5_vocos.py)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(r / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            else:
                p.copy_(0.1 * r)


def build_fs2(cfg: FastSpeech2Config, hcfg: HifiGanConfig, device: str, seed: int):
    acoustic, vocoder = FastSpeech2(cfg), HifiGan(hcfg)
    randomize(acoustic, seed)
    randomize(vocoder, seed + 1)
    with torch.no_grad():  # log(1 + d) ~= log(1 + FRAMES_PER_PHONE): speech-like lengths from random weights
        proj = acoustic.variance_adaptor.duration_predictor.proj
        proj.weight.mul_(0.05)
        proj.bias.fill_(math.log(1 + FRAMES_PER_PHONE))
    return acoustic.to(device).eval(), vocoder.to(device).eval()


class LexiconOnlyG2p:
    """Stands in for G2p: punctuation passes through (as g2p_en does), whitespace is nothing, a word is an error."""

    def __call__(self, word: str) -> list[str]:
        if not word.strip():
            return []
        if any(c.isalnum() for c in word):
            raise KeyError(f"{word!r} is not in the benchmark lexicon")
        return [word]


def synthetic_vocab(n: int) -> Vocab:
    """Space first, printable ASCII, then placeholder symbols up to n lines (like the official 2545)."""
    syms = [" "] + [chr(c) for c in range(33, 127)]
    syms += [f"sym{i}" for i in range(n - len(syms))]
    return Vocab(tuple(syms[:n]))


def reference_audio(seconds: float, rate: int, seed: int) -> torch.Tensor:
    """A speech-like synthetic clip: harmonics of a gliding 120-200 Hz pitch, syllable-rate envelope, a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    f0 = 160 + 40 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / rate
    wav = sum(torch.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 + torch.sin(2 * math.pi * 4 * t)) ** 2
    return (0.05 * wav * env + 0.003 * torch.randn(t.shape, generator=g)).float()


@functools.cache
def import_f5_tts():
    """f5_tts.model.{cfm,backbones.dit,utils} without running the package __init__ files (which import the trainer)."""
    spec = importlib.util.find_spec("f5_tts")
    if spec is None:
        raise ModuleNotFoundError("f5_tts is not installed")
    root = spec.submodule_search_locations[0]
    for name, path in (("f5_tts", root), ("f5_tts.model", f"{root}/model"), ("f5_tts.model.backbones", f"{root}/model/backbones")):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [path]
            sys.modules[name] = mod
    from importlib.metadata import version

    import f5_tts.model.backbones.dit as dit_mod
    import f5_tts.model.cfm as cfm_mod
    import f5_tts.model.utils as utils_mod

    return cfm_mod, dit_mod, utils_mod, version("f5-tts")


def build_f5(cfg: F5Config, vcfg: VocosConfig, vocab: Vocab, device: str, seed: int, with_ref: bool):
    """Our DiT (seeded random), their CFM with the same weights (via KEY_TABLE), our Vocos (seeded random)."""
    ours = F5DiT(cfg)
    randomize(ours, seed)
    vocoder = Vocos(vcfg)
    randomize(vocoder, seed + 1)
    ref = None
    if with_ref:
        cfm_mod, dit_mod, _, _ = import_f5_tts()
        dit = dit_mod.DiT(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, dim_head=cfg.dim_head, ff_mult=cfg.ff_mult,
                          text_dim=cfg.text_dim, conv_layers=cfg.conv_layers, text_mask_padding=cfg.text_mask_padding,
                          pe_attn_head=cfg.pe_attn_head, qk_norm=cfg.qk_norm, long_skip_connection=cfg.long_skip_connection,
                          attn_mask_enabled=False, text_num_embeds=len(vocab), mel_dim=cfg.mel_dim)
        ref = cfm_mod.CFM(transformer=dit, mel_spec_kwargs={"n_fft": cfg.n_fft, "hop_length": cfg.hop_length, "win_length": cfg.win_length,
                          "n_mel_channels": cfg.mel_dim, "target_sample_rate": cfg.sample_rate, "mel_spec_type": "vocos"},
                          odeint_kwargs={"method": "euler"}, vocab_char_map=dict(vocab.index))
        mine, copied = ours.state_dict(), set()
        theirs = ref.state_dict()
        for key in theirs:
            target = map_key(key)
            if target is not None:
                theirs[key] = mine[target]
                copied.add(target)
        ref.load_state_dict(theirs)
        assert copied == set(mine), f"not copied: {sorted(set(mine) - copied)[:5]}"
        ref = ref.to(device).eval()
    return ours.to(device).eval(), vocoder.to(device).eval(), ref


# ------------------------------------------------------------------ correctness

class RefF5:
    """The f5-tts package's inference for one request, as infer_batch_process does it (no cross-request batching)."""

    def __init__(self, cfm, utils_mod, vocoder: Vocos, ref_audio: torch.Tensor, ref_text: str, text: str, steps: int, device: str):
        self.cfm, self.vocoder, self.steps, self.device = cfm, vocoder, steps, device
        audio, self.gain = normalise_reference(ref_audio)
        self.audio = audio[None].to(device)
        self.ref_frames = reference_frames(audio.shape[0], vocoder.cfg.mel_hop)
        self.utils, self.text = utils_mod, prompt_text(ref_text) + text
        self.duration = total_frames(audio.shape[0], ref_text, text, 1.0, vocoder.cfg.mel_hop)

    @torch.inference_mode()
    def __call__(self) -> torch.Tensor:
        tokens = self.utils.convert_char_to_pinyin([self.text])  # per request, as infer_batch_process does
        out, _ = self.cfm.sample(cond=self.audio, text=tokens, duration=self.duration, steps=self.steps, cfg_strength=CFG_STRENGTH,
                                 sway_sampling_coef=SWAY, use_epss=False)
        mel = out.to(torch.float32)[:, self.ref_frames:, :].permute(0, 2, 1)
        return (self.vocoder.decode(mel) * self.gain)[0].cpu()


@torch.inference_mode()
def check_f5(ours: F5DiT, voice: F5Voice, ref, cfm_mod, utils_mod, vocab: Vocab, vocoder: Vocos, ref_audio, steps: int, device: str) -> dict:
    """Same mel, text and noise (captured from their CFM.sample): their sample vs our sample() and our FlowSolver job path."""
    audio, _ = normalise_reference(ref_audio)
    mel = vocoder.features(audio[None].to(device))[0].T  # (T_ref, M), the same conditioning for both sides
    text = prompt_text(REF_TEXT) + SENTENCE
    ids_ours = f5_text_to_ids(text, vocab.index)
    tokens = utils_mod.convert_char_to_pinyin([text])
    ids_theirs = utils_mod.list_str_to_idx(tokens, dict(vocab.index))[0].tolist()
    frames = total_frames(audio.shape[0], REF_TEXT, SENTENCE, 1.0, vocoder.cfg.mel_hop)
    captured = {}
    real = cfm_mod.odeint

    def recording(fn, y0, t, **kw):
        captured["y0"] = y0.clone()
        return real(fn, y0, t, **kw)

    cfm_mod.odeint = recording
    try:
        theirs, _ = ref.sample(cond=mel[None], text=tokens, duration=frames, steps=steps, cfg_strength=CFG_STRENGTH,
                               sway_sampling_coef=SWAY, seed=1234, use_epss=False)
    finally:
        cfm_mod.odeint = real
    y0 = captured["y0"]
    dtype = next(ours.parameters()).dtype
    mine = our_sample(ours, mel[None], torch.tensor([ids_ours], device=device), frames, steps=steps, cfg_strength=CFG_STRENGTH,
                      sway_coef=SWAY, noise=y0)
    job = voice.flow.job(mel, ids_ours, frames, steps, noise=y0[0])
    (batched,) = voice.flow.solve([job])
    t_ref = mel.shape[0]
    ref_gen = theirs[0, t_ref:].float()
    scale = float(ref_gen.abs().max())

    def rel(x):
        return float((x[t_ref:].float() - ref_gen).abs().max()) / scale

    return {"dtype": str(dtype).removeprefix("torch."), "steps": steps, "frames": int(theirs.shape[1]), "ref_frames": t_ref,
            "text_ids_equal": ids_ours == ids_theirs, "ref_gen_max_abs": scale,
            "max_rel_diff_sample": rel(mine[0]), "max_rel_diff_flowsolver": rel(batched)}


@torch.inference_mode()
def check_fs2(voice: FastSpeech2Voice) -> dict:
    """Streamed voice output vs the whole mel vocoded at once (same front-end)."""
    streamed = voice.synthesize(SynthesisRequest(SENTENCE))
    (sentence,) = split_sentences(normalize_english(SENTENCE))
    ids = torch.tensor([voice.phonemes(sentence)], device=voice.device)
    mel, frames = voice.acoustic.synthesize(ids, torch.tensor([ids.shape[1]], device=voice.device))
    whole = voice.vocoder(mel[:, : int(frames[0])].transpose(1, 2))[0].float().cpu()
    n = min(whole.shape[0], streamed.shape[0])
    return {"phonemes": ids.shape[1], "frames": int(frames[0]), "samples_streamed": streamed.shape[0], "samples_whole": whole.shape[0],
            "max_abs_diff": float((streamed[:n] - whole[:n]).abs().max()) if n else None}


# ------------------------------------------------------------------ timing

ENGINE_STREAMS = 1024


def engine_request(engine: Engine, request: SynthesisRequest, rate: int):
    """One request as ``legato serve`` runs it: a stream on the voice's engine route; yields its chunks."""

    def run():
        h = engine.open_stream(options={"sample_rate": rate})
        h.push(SpeechRequest(request))
        h.end()
        while True:
            frame = h.get(900)
            if isinstance(frame, AudioChunk):
                yield frame.samples[:, 0]
            elif isinstance(frame, ErrorEvent):
                raise RuntimeError(frame.message)
            else:  # EndOfStream, or None at the end
                return

    return run


def burst(n: int, one_request, rate: int) -> tuple[list[dict], float]:
    """n threads released together; each runs one_request() -> iterator of (n,) chunks. Returns per-request records, wall s."""
    barrier = threading.Barrier(n + 1)
    records: list[dict | None] = [None] * n
    errors: list[BaseException] = []

    def worker(i: int):
        barrier.wait()
        t0 = time.perf_counter()
        first, samples = None, 0
        try:
            for chunk in one_request():
                if first is None:
                    first = time.perf_counter() - t0
                samples += chunk.shape[0]
        except BaseException as exc:  # noqa: BLE001 - reported after the burst
            errors.append(exc)
            return
        total = time.perf_counter() - t0
        records[i] = {"ttfa_s": first, "total_s": total, "audio_s": samples / rate}

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return records, wall


def measure(name: str, one_request, rate: int, concurrency: list[int], min_requests: int, warmup: int, cuda: bool) -> list[dict]:
    for n in (1,) * warmup + ((min(8, max(concurrency)),) if warmup else ()):
        burst(n, one_request, rate)
    rows = []
    for n in concurrency:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        recs, walls = [], []
        for _ in range(max(1, math.ceil(min_requests / n))):
            r, w = burst(n, one_request, rate)
            recs += r
            walls.append(w)
        ttfa = [r["ttfa_s"] * 1e3 for r in recs]
        rtf = [r["total_s"] / r["audio_s"] for r in recs]
        audio = sum(r["audio_s"] for r in recs)
        row = {
            "side": name, "concurrency": n, "requests": len(recs), "bursts": len(walls),
            "ttfa_p50_ms": statistics.median(ttfa), "ttfa_p99_ms": pct(ttfa, 99), "ttfa_mean_ms": statistics.fmean(ttfa),
            "total_p50_ms": statistics.median(r["total_s"] * 1e3 for r in recs), "total_p99_ms": pct([r["total_s"] * 1e3 for r in recs], 99),
            "audio_s_per_request": audio / len(recs), "rtf_p50": statistics.median(rtf), "rtf_p99": pct(rtf, 99),
            "x_realtime_aggregate": audio / sum(walls), "rtf_aggregate": sum(walls) / audio, "burst_wall_s": walls,
        }
        if cuda:
            row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        rows.append(row)
        print(f"  {name:26s} N={n:3d}  TTFA p50 {row['ttfa_p50_ms']:9.1f} ms  p99 {row['ttfa_p99_ms']:9.1f} ms  "
              f"total p50 {row['total_p50_ms']:9.1f} ms  RTF p50 {row['rtf_p50']:.3f}  aggregate {row['x_realtime_aggregate']:8.1f}x RT  "
              f"({len(recs)} req, {row['audio_s_per_request']:.2f} s audio each)", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [("| family / side | NFE | streams N | requests | TTFA p50 ms | TTFA p99 ms | total p50 ms | audio s/req | RTF p50 | RTF p99 "
             "| aggregate x real time |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r.get('nfe', '-')} | {r['concurrency']} | {r['requests']} | {r['ttfa_p50_ms']:.1f} | {r['ttfa_p99_ms']:.1f} "
                     f"| {r['total_p50_ms']:.1f} | {r['audio_s_per_request']:.2f} | {r['rtf_p50']:.4f} | {r['rtf_p99']:.4f} "
                     f"| {r['x_realtime_aggregate']:.1f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--nfe", default="32,16", help="F5 ODE steps to time (the check runs at the first)")
    ap.add_argument("--families", default="fastspeech2,f5", help="comma list: fastspeech2, f5")
    ap.add_argument("--no-ref", action="store_true", help="skip the f5-tts package side (also skipped when it cannot be imported)")
    ap.add_argument("--precision", default="tf32", choices=["fp32", "tf32"], help="timing: fp32 strict or TF32 matmuls/convs (CUDA)")
    ap.add_argument("--max-batch", type=int, default=None, help="F5Voice jobs per DiT call (default: F5Voice's MAX_BATCH)")
    ap.add_argument("--min-requests", type=int, default=20, help="timed requests per N at least (bursts of N)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed single requests per side, then one burst of min(8, max N)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--commit", default=None, help="git commit to record (git may be missing on the device)")
    ap.add_argument("--out", default="bench_tts.json")
    ap.add_argument("--md", default=None, help="also write the markdown table here")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny configs on the CPU, N = 1, 2, NFE 4")
    args = ap.parse_args()
    fs2_cfg, hifi_cfg, f5_cfg, vocos_cfg = FS2_FULL, HIFI_FULL, F5_FULL, VOCOS_FULL
    if args.cpu_smoke:
        fs2_cfg, hifi_cfg, f5_cfg, vocos_cfg = FS2_SMOKE, HIFI_SMOKE, F5_SMOKE, VOCOS_SMOKE
        args.device, args.concurrency, args.min_requests, args.warmup = "cpu", "1,2", 2, 1
        if args.nfe == ap.get_default("nfe"):
            args.nfe = "4"
    concurrency = [int(x) for x in args.concurrency.split(",")]
    nfes = [int(x) for x in args.nfe.split(",")]
    families = args.families.split(",")
    cuda = args.device.startswith("cuda")
    torch.manual_seed(args.seed)
    if cuda:  # global (every thread): the F5 checks set their own flags inside
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision == "tf32"

    ref_version, ref_error = None, None
    if "f5" in families and not args.no_ref:
        try:
            *_, ref_version = import_f5_tts()
        except Exception as exc:  # noqa: BLE001 - report and run our side alone
            ref_error = f"{type(exc).__name__}: {exc}"
            print(f"f5-tts reference side skipped: {ref_error}", file=sys.stderr)
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "commit": args.commit or git_commit(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(), "f5_tts": ref_version,
        "f5_tts_error": ref_error,
        "device": torch.cuda.get_device_name(args.device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32, "precision": args.precision, "cpu_smoke": args.cpu_smoke,
        "sentence": SENTENCE, "reference_text": REF_TEXT, "reference_seconds": REF_SECONDS, "seed": args.seed,
        "concurrency": concurrency, "nfe": nfes, "min_requests": args.min_requests, "warmup": args.warmup,
        "notes": [
            ("TTFA: burst start (N threads released together) -> first audio chunk on the CPU; RTF per request = its total time / its "
            "audio seconds; aggregate x real time = audio seconds produced / burst wall time."),
            ("FastSpeech 2: FastSpeech2Voice on the engine (one worker runs every request's next chunk in turn; no cross-request "
             "batching in the voice); lexicon covers the sentence, g2p stub."),
            ("F5 ours: F5Voice on the engine (VoiceStage): all requests' chunk jobs advance together, one DiT call per round; first "
             "chunk alone (short), rest after it."),
            ("F5 reference: f5-tts CFM.sample (use_epss=False, same grid as ours) on the whole text + our Vocos decode, one request per "
            "thread; TTFA = the whole request (it yields nothing before the full mel)."),
            "Both F5 sides vocode with our Vocos (same weights). All fp32; precision tf32 = TF32 matmuls and convs while timing.",
        ],
    }
    print(f"{info['device']}  torch {info['torch']}  f5-tts {ref_version}  commit {info['commit']}  {info['date']}  precision {args.precision}")
    result = {**info, "correctness": {}, "rows": []}

    def save():
        result["markdown"] = table(result["rows"])
        Path(args.out).write_text(json.dumps(result, indent=1))
        if args.md:
            Path(args.md).write_text(f"# bench_tts: {info['device']}, torch {info['torch']}, commit {info['commit']}, {info['date']}\n\n"
                                     f"{result['markdown']}\n\n" + "\n".join(f"- {n}" for n in info["notes"]) + "\n")

    # ---------------- FastSpeech 2 + HiFi-GAN
    if "fastspeech2" in families:
        acoustic, hifigan = build_fs2(fs2_cfg, hifi_cfg, args.device, args.seed)
        lexicon = {w: p.split() for w, p in LEXICON.items()}
        voice = FastSpeech2Voice("fs2", acoustic, fs2_cfg, hifigan, lexicon, g2p=LexiconOnlyG2p())
        print(f"FastSpeech 2: {sum(p.numel() for p in acoustic.parameters()) / 1e6:.1f} M params, HiFi-GAN "
              f"{sum(p.numel() for p in hifigan.parameters()) / 1e6:.1f} M, lookahead {hifi_cfg.lookahead_ms:.0f} ms")
        result["correctness"]["fastspeech2_stream_vs_whole"] = c = check_fs2(voice)
        print(f"check FastSpeech 2: {c}")
        request = SynthesisRequest(SENTENCE)
        with Engine(voice_route(voice), max_streams=ENGINE_STREAMS) as engine:
            for row in measure("fastspeech2+hifigan (ours)", engine_request(engine, request, voice.sample_rate), voice.sample_rate,
                               concurrency, args.min_requests, args.warmup, cuda):
                result["rows"].append(row)
        save()
        del voice, acoustic, hifigan
        gc.collect()

    # ---------------- F5-TTS + Vocos
    if "f5" in families:
        with_ref = ref_version is not None
        vocab = synthetic_vocab(N_VOCAB)
        ours, vocoder, ref_cfm = build_f5(f5_cfg, vocos_cfg, vocab, args.device, args.seed, with_ref)
        print(f"F5 DiT: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f} M params, Vocos {sum(p.numel() for p in vocoder.parameters()) / 1e6:.1f} M")
        ref_audio = reference_audio(REF_SECONDS, vocos_cfg.sample_rate, args.seed)
        kw = {} if args.max_batch is None else {"max_batch": args.max_batch}
        if with_ref:
            cfm_mod, _, utils_mod, _ = import_f5_tts()
            checks = [("fp32_strict_no_tf32", False), ("tf32", True)] if cuda else [("fp32", None)]
            for name, tf in checks:
                v = F5Voice("f5check", ours, vocab, vocoder, ref_audio, REF_TEXT, steps=nfes[0], **kw)
                with tf32(tf) if tf is not None else contextlib.nullcontext():
                    c = check_f5(ours, v, ref_cfm, cfm_mod, utils_mod, vocab, vocoder, ref_audio, nfes[0], args.device)
                result["correctness"][f"f5_{name}"] = c
                print(f"check F5 {name}: {c}")
            first = result["correctness"][f"f5_{checks[0][0]}"]
            worst = max(first["max_rel_diff_sample"], first["max_rel_diff_flowsolver"])
            if worst > CHECK_ABORT_REL or not first["text_ids_equal"]:
                print(f"ABORT: F5 relative difference {worst:.2e} > {CHECK_ABORT_REL} or text ids differ", file=sys.stderr)
                save()
                return 1
        for nfe in nfes:
            voice = F5Voice("f5", ours, vocab, vocoder, ref_audio, REF_TEXT, steps=nfe, **kw)
            request = SynthesisRequest(SENTENCE)
            calls: list[int] = []  # jobs per DiT call
            step = voice.step_jobs
            voice.step_jobs = lambda jobs, step=step, calls=calls: (calls.append(len(jobs)), step(jobs))[1]
            with Engine(voice_route(voice), max_streams=ENGINE_STREAMS) as engine:
                rows = measure("f5+vocos (ours, batched)", engine_request(engine, request, voice.sample_rate), voice.sample_rate,
                               concurrency, args.min_requests, args.warmup, cuda)
            for r in rows:
                r.update(nfe=nfe, dit_calls=len(calls), max_jobs_per_dit_call=max(calls, default=0))
            result["rows"] += rows
            save()
            if ref_cfm is not None:
                ref = RefF5(ref_cfm, utils_mod, vocoder, ref_audio, REF_TEXT, SENTENCE, nfe, args.device)
                rows = measure("f5+vocos (f5-tts package)", lambda f=ref: iter([f()]), vocos_cfg.sample_rate, concurrency,
                               args.min_requests, args.warmup, cuda)
                for r in rows:
                    r["nfe"] = nfe
                result["rows"] += rows
                save()
            for n in concurrency:  # side-by-side ratios
                mine = next((r for r in result["rows"] if r["side"].endswith("(ours, batched)") and r.get("nfe") == nfe and r["concurrency"] == n), None)
                theirs = next((r for r in result["rows"] if r["side"].endswith("(f5-tts package)") and r.get("nfe") == nfe and r["concurrency"] == n), None)
                if mine and theirs:
                    result.setdefault("f5_ratios", []).append({
                        "nfe": nfe, "concurrency": n, "ttfa_p50_ref_over_ours": theirs["ttfa_p50_ms"] / mine["ttfa_p50_ms"],
                        "ttfa_p99_ref_over_ours": theirs["ttfa_p99_ms"] / mine["ttfa_p99_ms"],
                        "throughput_ours_over_ref": mine["x_realtime_aggregate"] / theirs["x_realtime_aggregate"]})
    save()
    print(f"\n{result['markdown']}\n")
    for r in result.get("f5_ratios", []):
        print(f"F5 NFE {r['nfe']} N={r['concurrency']}: TTFA p50 ref/ours {r['ttfa_p50_ref_over_ours']:.2f}x, p99 "
              f"{r['ttfa_p99_ref_over_ours']:.2f}x; aggregate throughput ours/ref {r['throughput_ours_over_ref']:.2f}x")
    print(f"wrote {args.out}" + (f" and {args.md}" if args.md else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
