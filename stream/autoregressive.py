"""Continuous batching for autoregressive models (any model with ``step(Rows, KvCache) -> logits``).

A request is an :class:`ArJob`: a prompt, sampling settings, stop tokens and a length cap. ``ArStepper.step(jobs)``
advances any set of jobs by one fused forward under a token budget (Dynamic SplitFuse): every decoding job
contributes its one new token first, then prompts still being prefilled fill the rest of the budget in chunks,
so a long new prompt never stalls the running streams. A job takes a KV slot at its first step and frees it
the step it finishes, so new requests join at the next step. A step whose rows are all one-token decodes
replays a CUDA graph of the model step (``DecodeGraphs``, on GPU) instead of launching it kernel by kernel;
the only host synchronisation per step is reading the sampled tokens. Jobs plug into the engine's generating
stages (``tts/stage.py``): a voice submits its job and waits on :class:`TokenMark` s to stream groups of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from legato.stream.decode_graphs import DecodeGraphs
from legato.stream.kv_cache import KvCache
from legato.stream.packed_batch import PackedBatch

DEFAULT_TOKEN_BUDGET = 2048  # tokens per fused step (decode tokens + prefill chunks)


class StepModel(Protocol):
    def pack(self, chunks: list[list[int]], starts: list[int], slots: list[int]) -> PackedBatch: ...

    def step(self, batch: PackedBatch, cache: KvCache) -> torch.Tensor: ...


@dataclass(eq=False)
class ArJob:
    prompt: list[int]
    params: object  # the sampler's per-request settings (``SamplingParams``)
    stop: frozenset[int]
    max_new: int
    generated: list[int] = field(default_factory=list)
    slot: int | None = None
    cached: int = 0  # tokens whose keys/values are in the cache
    done: bool = False
    reason: str = ""  # "stop", "length", "capacity"

    @property
    def result(self) -> list[int]:
        return self.generated


@dataclass(eq=False)
class TokenMark:
    """Something to ``Wait`` on: done once the job has ``count`` tokens or has finished; ``result`` is that prefix."""

    job: ArJob
    count: int

    @property
    def done(self) -> bool:
        return self.job.done or len(self.job.generated) >= self.count

    @property
    def result(self) -> list[int]:
        return self.job.generated[: self.count]


class Histories(Sequence):
    """Each job's prompt + generated tokens, built only for the rows that ask (the repetition penalty)."""

    def __init__(self, jobs: list[ArJob]):
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i):
        return self.jobs[i].prompt + self.jobs[i].generated


class ArStepper:
    def __init__(self, model: StepModel, cache: KvCache, sampler, *, token_budget: int = DEFAULT_TOKEN_BUDGET,
                 cuda_graphs: bool = True):
        """``sampler(logits (B, V), params list, steps list, histories) -> (B,) ids``. ``cuda_graphs``: replay decode
        steps from CUDA graphs when the model is on a GPU."""
        self.model, self.cache, self.sampler = model, cache, sampler
        self.token_budget = token_budget
        self.device = next(model.parameters()).device
        self.graphs = DecodeGraphs(model, cache) if cuda_graphs and self.device.type == "cuda" else None

    def finish(self, job: ArJob, reason: str) -> None:
        job.done, job.reason = True, reason
        if job.slot is not None:
            self.cache.release(job.slot)
            job.slot = None

    def _plan(self, jobs: Sequence[ArJob]) -> list[tuple[ArJob, list[int]]]:
        """Decode tokens first (one per decoding job), then prefill chunks while the budget lasts."""
        plan, budget = [], self.token_budget
        decoding = [j for j in jobs if not j.done and j.generated and j.cached == len(j.prompt) + len(j.generated) - 1]
        prefill = [j for j in jobs if not j.done and j.cached < len(j.prompt)]
        for j in decoding:
            if budget <= 0:
                break
            plan.append((j, [j.generated[-1]]))
            budget -= 1
        for j in prefill:
            if budget <= 0:
                break
            n = min(len(j.prompt) - j.cached, budget, self.cache.max_tokens - j.cached)
            plan.append((j, j.prompt[j.cached : j.cached + n]))
            budget -= n
        return plan

    def _forward(self, plan: list[tuple[ArJob, list[int]]]) -> torch.Tensor:
        starts, slots = [j.cached for j, _ in plan], [j.slot for j, _ in plan]
        if self.graphs is not None and all(len(c) == 1 for _, c in plan) and self.graphs.fits(len(plan)):
            return self.graphs.run([c[0] for _, c in plan], starts, slots)
        return self.model.step(self.model.pack([c for _, c in plan], starts, slots), self.cache)

    @torch.inference_mode()
    def step(self, jobs: Sequence[ArJob]) -> None:
        for j in jobs:
            if j.slot is None and not j.done:
                try:
                    j.slot = self.cache.acquire()
                except Exception:
                    continue  # no free slot yet: it waits for one to free
        plan = self._plan([j for j in jobs if j.slot is not None])
        if not plan:
            return
        logits = self._forward(plan)
        for j, c in plan:
            j.cached += len(c)
        ready = [i for i, (j, _) in enumerate(plan) if j.cached == len(j.prompt) + len(j.generated)]  # prompt done or decoded
        if not ready:
            return
        chosen = [plan[i][0] for i in ready]
        rows = logits if len(ready) == len(plan) else logits[torch.tensor(ready, device=logits.device)]
        ids = self.sampler(rows, [j.params for j in chosen], [len(j.generated) for j in chosen], Histories(chosen)).tolist()
        for j, tok in zip(chosen, ids):
            if tok in j.stop:
                self.finish(j, "stop")
                continue
            j.generated.append(tok)
            if len(j.generated) >= j.max_new or j.cached + 1 >= self.cache.max_tokens:
                self.finish(j, "length")
