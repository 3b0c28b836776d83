"""Where PiperVoice's steps go under concurrent requests on a GPU (diagnostic for bench_vits): per voice step its
time, the jobs it ran (encodes, decode windows, the longest decoder and flow inputs) and its peak GPU memory; the
slowest steps and the first steps of each burst.

    python3 -P bench/profile_vits_steps.py [default|nocudnn] [--import .devcarry/vits]

``nocudnn`` turns cuDNN off (convolutions by PyTorch's own kernels), to tell cuDNN's algorithm choice from the rest.
The voice comes from bench_vits' ``--export`` folder (the device machine has no espeak-ng nor the voice package).
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
import bench_vits  # noqa: E402
from bench_tts import burst, engine_request  # noqa: E402

from legato.stream.engine import Engine  # noqa: E402
from legato.stream.intra_op import serial_main_thread  # noqa: E402
from legato.tts.stage import voice_route  # noqa: E402
from legato.tts.vits.voice import DecodeJob, EncodeJob  # noqa: E402
from legato.tts.voice import SynthesisRequest  # noqa: E402

serial_main_thread()
mode = sys.argv[1] if len(sys.argv) > 1 else "default"
if mode == "nocudnn":
    torch.backends.cudnn.enabled = False


class A:
    import_dir = sys.argv[sys.argv.index("--import") + 1] if "--import" in sys.argv else ".devcarry/vits"
    device = "cuda"


v = bench_vits.load_ours(A)
log = []
orig = v.step_jobs
t00 = [time.perf_counter()]


def traced(jobs):
    t = time.perf_counter()
    soon = time.monotonic() + 0.05
    sel = [j for j in jobs if j.first_audio] or [j for j in jobs if j.due <= soon] or jobs
    torch.cuda.reset_peak_memory_stats()
    orig(jobs)
    torch.cuda.synchronize()
    dec = [j.window.dec_in[1] - j.window.dec_in[0] for j in sel if isinstance(j, DecodeJob)]
    flow = [j.window.flow_in[1] - j.window.flow_in[0] for j in sel if isinstance(j, DecodeJob)]
    log.append((t - t00[0], time.perf_counter() - t, len(jobs), sum(isinstance(j, EncodeJob) for j in sel), len(dec),
                max(dec, default=0), max(flow, default=0), torch.cuda.max_memory_allocated() / 2**30))


v.step_jobs = traced
with Engine(voice_route(v), max_streams=512) as eng:
    one = engine_request(eng, SynthesisRequest(bench_vits.TEXT), v.sample_rate)
    for n in (1, 1, 8, 8, 64):
        burst(n, one, v.sample_rate)
    for n in (64, 64, 256, 64):
        log.clear(); t00[0] = time.perf_counter()
        recs, wall = burst(n, one, v.sample_rate)
        ttfa = sorted(r["ttfa_s"] * 1e3 for r in recs)
        steps = sorted(log, key=lambda r: -r[1])
        print(f"[{mode}] N={n} ttfa p50 {statistics.median(ttfa):.0f} p99 {ttfa[-2]:.0f} ms wall {wall:.2f}s; {len(log)} steps, "
              f"sum {sum(r[1] for r in log):.2f}s, peak {max(r[7] for r in log):.1f} GiB, allocator retries "
              f"{torch.cuda.memory_stats().get('num_alloc_retries', 0)}, cudnn.benchmark {torch.backends.cudnn.benchmark}",
              flush=True)
        for r in steps[:6]:
            print("   slowest: t=%.3f dur=%.3f offered=%d enc=%d dec=%d maxdec=%d maxflow=%d peak=%.1fGiB" % r)
        for r in log[:8]:
            print("   first:   t=%.3f dur=%.3f offered=%d enc=%d dec=%d maxdec=%d maxflow=%d peak=%.1fGiB" % r)
