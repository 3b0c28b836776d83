"""Llasa's Llama against transformers (fixture made by tests/fixtures/make_llasa_fixture.py): prompt ids from the
chat template, logits over the prompts, 50 greedy decode steps with the KV cache, batched and alone, rotary
tables with Llama 3 scaling, and the sampling processors."""

import json

import numpy as np
import pytest
import torch

from legato.stream.autoregressive import ArJob, ArStepper
from legato.tts.llasa.llama import Llama, inv_frequencies, rotary
from legato.tts.llasa.prompt import LlasaTokenizer
from legato.tts.llasa.sampling import SamplingParams, process, sample

from conftest import FIXTURES

LLASA = FIXTURES / "llasa"
FOLDER = LLASA / "llama_tiny"


@pytest.fixture(scope="module")
def fx():
    meta = json.loads((LLASA / "llasa_tiny_meta.json").read_text())
    return Llama.from_pretrained(FOLDER), np.load(LLASA / "llasa_tiny.npz"), meta


def test_prompt_ids_follow_the_chat_template(fx):
    _, z, meta = fx
    tok = LlasaTokenizer.from_folder(FOLDER)
    tok.date = meta["date_string"]  # the template prints "Today Date"; the fixture pinned it
    assert (tok.speech_offset, tok.speech_count) == (408, 256)
    by_name = {p["name"]: p for p in meta["prompts"]}
    p = by_name["with_prompt_speech"]
    ids = tok.prompt_ids("Hello world, this is a test.", "This is the prompt voice.", p["prompt_speech_codes"])
    assert tok.prompt_text("Hello world, this is a test.", "This is the prompt voice.", p["prompt_speech_codes"]) == p["rendered"]
    assert ids == z["with_prompt_speech/prompt_ids"].tolist()
    assert tok.prompt_ids(by_name["text_only"]["input_text"]) == z["text_only/prompt_ids"].tolist()
    assert tok.codes([408, 409, 663, 405, 12]) == [0, 1, 255]


def test_rotary_tables_with_llama3_scaling(fx):
    model, z, _ = fx
    inv = inv_frequencies(model.cfg)
    torch.testing.assert_close(inv, torch.from_numpy(z["rope_inv_freq"]), rtol=1e-6, atol=0)
    for pos, cos_key, sin_key in (("rope_positions", "rope_cos", "rope_sin"), ("rope_far_positions", "rope_far_cos", "rope_far_sin")):
        cos, sin = rotary(torch.from_numpy(z[pos]).long(), inv, torch.float32)
        torch.testing.assert_close(cos, torch.from_numpy(z[cos_key]), rtol=0, atol=1e-6)
        torch.testing.assert_close(sin, torch.from_numpy(z[sin_key]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["with_prompt_speech", "text_only"])
def test_prompt_logits_and_greedy_decode_match_transformers(fx, name):
    model, z, _ = fx
    prompt = z[f"{name}/prompt_ids"].tolist()
    cache = model.new_cache(1, 256)
    full = model.step(model.pack([prompt], [0], [0]), cache, all_logits=True)
    torch.testing.assert_close(full, torch.from_numpy(z[f"{name}/logits_full"]), rtol=0, atol=2e-4)
    ids, pos, last = [], len(prompt), full[-1]
    for step in range(50):
        torch.testing.assert_close(last, torch.from_numpy(z[f"{name}/greedy_logits"][step]), rtol=0, atol=2e-4)
        ids.append(int(last.argmax()))
        last = model.step(model.pack([[ids[-1]]], [pos], [0]), cache)[0]
        pos += 1
    assert ids == z[f"{name}/greedy_ids"].tolist()


def test_both_prompts_batched_on_the_stepper_give_the_same_ids(fx):
    model, z, _ = fx
    stepper = ArStepper(model, model.new_cache(2, 256), sample, token_budget=32)
    jobs = [ArJob(z[f"{n}/prompt_ids"].tolist(), SamplingParams(temperature=0), frozenset(), 50) for n in ("with_prompt_speech", "text_only")]
    while not all(j.done for j in jobs):
        stepper.step(jobs)
    assert [j.generated for j in jobs] == [z["with_prompt_speech/greedy_ids"].tolist(), z["text_only/greedy_ids"].tolist()]


@pytest.mark.parametrize("run", ["llasa_official", "temperature_only", "repetition_penalty_1.2", "hot_top_k_50", "hot_no_top_k", "top_p_0.9"])
def test_sampling_processors_keep_what_transformers_drew(fx, run):
    _, z, meta = fx
    eff = meta["sampling"][run]["effective"]
    params = SamplingParams(temperature=eff["temperature"], top_p=eff["top_p"], top_k=eff["top_k"] or 0, repetition_penalty=eff["repetition_penalty"])
    raw, drawn = torch.from_numpy(z[f"sample/{run}/raw_logits"]), z[f"sample/{run}/ids"].tolist()
    history = z["with_prompt_speech/prompt_ids"].tolist()
    for step in range(50):
        scores = process(raw[step : step + 1], [params], [history])[0]
        kept = torch.isfinite(scores)
        assert kept[drawn[step]], (run, step)  # transformers' draw is among the tokens ours keeps
        if params.top_k:
            assert int(kept.sum()) == params.top_k
        history = history + [drawn[step]]
