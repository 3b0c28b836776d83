"""Where a Llasa decode step's time goes (diagnostic for bench_llasa): model forward vs sampling, per batch size."""

import sys
import time

import torch

sys.path.insert(0, "bench")
from bench_llasa import FULL, PROMPT, build  # noqa: E402

from legato.stream.autoregressive import ArJob, ArStepper  # noqa: E402
from legato.tts.llasa.llama import Rows  # noqa: E402
from legato.tts.llasa.sampling import SamplingParams, sample  # noqa: E402


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


theirs, ours = build(FULL, "cuda", 0)
del theirs
ours.to(torch.bfloat16)
for n in (1, 8, 64):
    st = ArStepper(ours, ours.new_cache(n, 512), sample, rows_builder=Rows.build)
    jobs = [ArJob(list(range(3, 3 + PROMPT)), SamplingParams(seed=i), frozenset(), 100) for i in range(n)]
    parts = {"model": [], "sample": [], "step": []}
    real_step, real_sample = ours.step, st.sampler
    st.model = type("M", (), {"step": lambda self, r, c: (lambda o: (parts["model"].append(o[1]), o[0])[1])(timed(lambda: real_step(r, c))),
                              "parameters": ours.parameters})()
    st.sampler = lambda *a: (lambda o: (parts["sample"].append(o[1]), o[0])[1])(timed(lambda: real_sample(*a)))
    for k in range(40):
        _, t = timed(lambda: st.step(jobs))
        parts["step"].append(t)
    med = {k: sorted(v[5:])[len(v[5:]) // 2] * 1e3 for k, v in parts.items()}
    print(f"N={n}: step {med['step']:.1f} ms, model {med['model']:.1f} ms, sample {med['sample']:.1f} ms", flush=True)
