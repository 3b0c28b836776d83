"""Autoregressive serving core: our Llama's ragged fused step, slot KV cache, SplitFuse continuous batching, sampling."""

import pytest
import torch

from legato.stream.autoregressive import ArJob, ArStepper, TokenMark
from legato.stream.errors import CapacityError
from legato.tts.llasa.llama import Llama, LlamaConfig, inv_frequencies
from legato.tts.llasa.sampling import SamplingParams, process, sample, uniforms

CFG = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, rope_theta=500000.0, rope_scaling=(32.0, 1.0, 4.0, 8192), tie_word_embeddings=True)
PROMPTS = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [1, 2], [7] * 20]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Llama(CFG).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    return m


def test_chunked_prefill_fused_with_other_rows_equals_one_forward(model):
    ids = [3, 4, 5, 6, 7, 8, 9]
    full = model.step(model.pack([ids], [0], [0]), model.new_cache(2, 32), all_logits=True)
    cache = model.new_cache(4, 32)
    a = model.step(model.pack([ids[:3], [1, 2]], [0, 0], [1, 2]), cache, all_logits=True)  # tokens packed: 3 + 2
    b = model.step(model.pack([ids[3:6], [5]], [3, 2], [1, 2]), cache, all_logits=True)
    c = model.step(model.pack([ids[6:]], [6], [1]), cache)
    torch.testing.assert_close(torch.cat([a[:3], b[:3], c]), full, atol=1e-5, rtol=1e-5)
    # the other row's tokens: its one-forward logits
    other = model.step(model.pack([[1, 2, 5]], [0], [0]), model.new_cache(1, 32), all_logits=True)
    torch.testing.assert_close(torch.cat([a[3:], b[3:]]), other, atol=1e-5, rtol=1e-5)


def test_prefill_blocks_split_long_chunks(model):
    batch = model.pack([[1] * 20, [2], [3, 4]], [0, 5, 1], [0, 3, 1])
    assert batch.block_tokens == 32  # 64-row query tile / 2 query heads per KV head
    assert batch.decode_blocks.tolist() == [[20, 1]] and batch.prefill_blocks.tolist() == [[0, 20], [21, 2]]
    assert batch.last.tolist() == [19, 20, 22] and batch.positions.tolist()[19:23] == [19, 5, 1, 2]


def _generate(model, batched, budget, slots=4):
    st = ArStepper(model, model.new_cache(slots, 128), sample, token_budget=budget)
    # the first request stops early and frees its slot while the others run
    jobs = [ArJob(p, SamplingParams(temperature=0 if i == 0 else 0.9, seed=i), frozenset({49}), 8 if i == 0 else 30) for i, p in enumerate(PROMPTS)]
    if batched:
        while not all(j.done for j in jobs):
            st.step(jobs)
    else:
        for j in jobs:
            while not j.done:
                st.step([j])
    return [j.generated for j in jobs], st


@pytest.mark.parametrize("budget", [1, 5, 4096])
def test_batched_splitfuse_generation_equals_one_request_at_a_time(model, budget):
    alone, _ = _generate(model, False, 4096)
    together, stepper = _generate(model, True, budget)
    assert together == alone  # greedy and seeded-sampled rows alike: batching never changes a request
    assert stepper.cache.in_use == 0  # every slot freed as its job finished


def test_jobs_wait_for_a_free_slot(model):
    st = ArStepper(model, model.new_cache(1, 64), sample)
    jobs = [ArJob(p, SamplingParams(temperature=0), frozenset(), 5) for p in PROMPTS[:2]]
    mark = TokenMark(jobs[1], 3)
    steps = 0
    while not all(j.done for j in jobs):
        st.step(jobs)
        steps += 1
        assert st.cache.in_use <= 1
    assert [len(j.generated) for j in jobs] == [5, 5] and jobs[0].reason == "length"
    assert mark.done and mark.result == jobs[1].generated[:3]
    with pytest.raises(CapacityError):
        c = model.new_cache(1, 8)
        c.acquire(), c.acquire()


def test_llama3_rope_scaling_slows_only_long_wavelengths():
    inv = inv_frequencies(CFG)
    plain = inv_frequencies(LlamaConfig(**{**CFG.__dict__, "rope_scaling": None}))
    assert torch.allclose(inv[0], plain[0]) and torch.allclose(inv[-1], plain[-1] / 32)


def test_sampling_settings():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    counts = torch.zeros(4)
    for s in range(3000):
        counts[sample(logits, [SamplingParams(temperature=1.0, seed=s)], [0])[0]] += 1
    assert torch.allclose(counts / 3000, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    picks = {int(sample(logits, [SamplingParams(temperature=1.0, top_p=0.7, seed=s)], [0])[0]) for s in range(200)}
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.7
    picks = {int(sample(logits, [SamplingParams(temperature=5.0, top_k=3, seed=s)], [0])[0]) for s in range(300)}
    assert picks == {0, 1, 2}
    penalised = sample(logits, [SamplingParams(temperature=0, repetition_penalty=10.0)], [0], [[0]])
    assert int(penalised[0]) == 1
    # a row's draw depends on its seed and step only, not on the other rows of the batch
    alone = sample(logits, [SamplingParams(temperature=1.0, seed=7)], [3])
    mixed = sample(logits.repeat(3, 1), [SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=1.0, seed=7), SamplingParams(temperature=0)], [0, 3, 0])
    assert int(mixed[1]) == int(alone[0])
    u = uniforms(torch.tensor([1, 2]), torch.tensor([0, 5]), 10000)
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02


def test_top_k_draw_equals_the_full_vocabulary_draw():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 3000, generator=g) * 3
    logits[5, :40] = 9.0  # ties at the k-th score, within the margin
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, seed=i) for i, (t, k, p) in
              enumerate([(0.8, 50, 1.0), (1.3, 5, 1.0), (0.5, 50, 0.9), (1.0, 1, 1.0), (2.0, 20, 0.5), (1.0, 30, 1.0)])]
    for step in range(20):
        compact = sample(logits, params, [step] * 6)
        # the full-vocabulary path: top-k by `process` over every token, noise for every token
        scores = process(logits, params)
        u = uniforms(torch.tensor([p.seed for p in params]), torch.tensor([step] * 6), 3000)
        assert torch.equal(compact, (scores.double() - torch.log(-torch.log(u))).argmax(dim=1))
