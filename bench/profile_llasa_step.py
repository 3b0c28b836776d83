"""Where a Llasa decode step's time goes (diagnostic for bench_llasa), per batch size: the model forward eager
(kernel by kernel) and replayed from its CUDA graph, the sampler, and a whole ``ArStepper.step``; also checks the
graph's logits against the eager step's."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (scripts run with python -P)
from bench_llasa import FULL, PROMPT, build  # noqa: E402
from common import time_steps  # noqa: E402

from legato.stream.autoregressive import ArJob, ArStepper  # noqa: E402
from legato.tts.llasa.sampling import SamplingParams, sample  # noqa: E402

STEPS = 20


def main() -> None:
    theirs, ours = build(FULL, "cuda", 0)
    del theirs
    ours.to(torch.bfloat16)
    for n in [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "1,8,64,256,512").split(",")]:
        st = ArStepper(ours, ours.new_cache(n, 512), sample)
        st.graphs.prepare()
        jobs = [ArJob(list(range(3, 3 + PROMPT)), SamplingParams(seed=i), frozenset(), 400) for i in range(n)]
        while not all(j.generated for j in jobs):
            st.step(jobs)
        toks, pos, slots = [j.generated[-1] for j in jobs], [j.cached for j in jobs], [j.slot for j in jobs]
        eager = lambda: ours.step(ours.pack([[t] for t in toks], pos, slots), st.cache)  # noqa: E731
        graph = lambda: st.graphs.run(toks, pos, slots)  # noqa: E731
        diff = float((eager().float() - graph().float()).abs().max())
        logits = graph().clone()
        params = [j.params for j in jobs]
        t = {"eager forward": time_steps(eager, 3, STEPS, True), "graph forward": time_steps(graph, 3, STEPS, True),
             "sample": time_steps(lambda: sample(logits, params, [5] * n), 3, STEPS, True),
             "ArStepper.step": time_steps(lambda: st.step(jobs), 3, STEPS, True)}
        med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
        print(f"N={n}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()) + f"; graph vs eager logits max diff {diff:.3g}", flush=True)
        del st
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
