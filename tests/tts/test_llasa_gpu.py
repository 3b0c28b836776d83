"""GPU: the Llasa fixture Llama on CUDA. Decode steps replayed from CUDA graphs give the eager step's logits and
the same generations, at every batch-size bucket, with requests joining and leaving; matches transformers' greedy
ids. Skipped without CUDA (CI has none); run on the device machine."""

import numpy as np
import pytest
import torch

from legato.stream.autoregressive import ArJob, ArStepper
from legato.tts.llasa.llama import Llama
from legato.tts.llasa.sampling import SamplingParams, sample

from conftest import FIXTURES

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu]
LLASA = FIXTURES / "llasa"


@pytest.fixture(scope="module")
def fx():
    torch.backends.cuda.matmul.allow_tf32 = False
    return Llama.from_pretrained(LLASA / "llama_tiny", "cuda"), np.load(LLASA / "llasa_tiny.npz")


def _generate(model, prompts, graphs, slots=6):
    st = ArStepper(model, model.new_cache(slots, 256), sample, token_budget=24, cuda_graphs=graphs)
    jobs = [ArJob(p, SamplingParams(temperature=0 if i % 2 else 0.9, seed=i), frozenset(), 20 + 7 * i) for i, p in enumerate(prompts)]
    pending, running = list(jobs), []
    while pending or running:
        if pending and len(running) < slots:
            running.append(pending.pop(0))  # one new request per step: joins while others decode
        st.step(running)
        running = [j for j in running if not j.done]
    return [j.generated for j in jobs], st


def test_graph_replays_equal_eager_steps(fx):
    model, z = fx
    base = [z["with_prompt_speech/prompt_ids"].tolist(), z["text_only/prompt_ids"].tolist()]
    prompts = [base[i % 2][: 20 + 3 * i] for i in range(9)]
    eager, _ = _generate(model, prompts, graphs=False)
    replayed, st = _generate(model, prompts, graphs=True)
    assert replayed == eager
    assert st.graphs.graphs  # decode steps did replay graphs
    assert st.cache.in_use == 0


def test_greedy_ids_match_transformers_on_cuda(fx):
    model, z = fx
    st = ArStepper(model, model.new_cache(2, 256), sample, token_budget=32)
    jobs = [ArJob(z[f"{n}/prompt_ids"].tolist(), SamplingParams(temperature=0), frozenset(), 50) for n in ("with_prompt_speech", "text_only")]
    while not all(j.done for j in jobs):
        st.step(jobs)
    assert [j.generated for j in jobs] == [z["with_prompt_speech/greedy_ids"].tolist(), z["text_only/greedy_ids"].tolist()]
