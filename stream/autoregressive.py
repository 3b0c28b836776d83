"""Continuous batching for autoregressive models (any model with ``step(Rows, KvCache) -> logits``).

A request is an :class:`ArJob`: a prompt, sampling settings, stop tokens and a length cap. ``ArStepper.step(jobs)``
advances any set of jobs by one fused forward under a token budget (Dynamic SplitFuse): every decoding job
contributes its one new token first, then prompts still being prefilled fill the rest of the budget in chunks,
so a long new prompt never stalls the running streams. A job takes a KV slot at its first step and frees it
the step it finishes, so new requests join at the next step. Running jobs always hold the lowest slots (when
one ends, the job in the highest slot moves into its place), so a step reads every row's keys/values as one
view of the cache instead of gathering them. Jobs plug into the engine's generating stages
(``tts/stage.py``): a voice submits its job and waits on :class:`TokenMark` s to stream groups of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from legato.stream.kv_cache import KvCache

DEFAULT_TOKEN_BUDGET = 2048  # tokens per fused step (decode tokens + prefill chunks)


class StepModel(Protocol):
    def step(self, rows, cache: KvCache) -> torch.Tensor: ...


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


class ArStepper:
    def __init__(self, model: StepModel, cache: KvCache, sampler, *, token_budget: int = DEFAULT_TOKEN_BUDGET, rows_builder=None):
        """``sampler(logits (B, V), params list, steps list, histories) -> (B,) ids``; ``rows_builder(chunks, starts, slots,
        device)`` makes the model's step input (``Rows.build`` for our Llama)."""
        self.model, self.cache, self.sampler = model, cache, sampler
        self.token_budget, self.rows_builder = token_budget, rows_builder
        self.device = next(model.parameters()).device
        self.holders: dict[int, ArJob] = {}  # slot -> job; always slots 0..n-1

    def finish(self, job: ArJob, reason: str) -> None:
        job.done, job.reason = True, reason
        if job.slot is None:
            return
        freed, top = job.slot, len(self.holders) - 1
        job.slot = None
        del self.holders[freed]
        if freed != top:  # keep running jobs dense: the highest slot's job moves down
            mover = self.holders.pop(top)
            self.cache.move(top, freed)
            mover.slot = freed
            self.holders[freed] = mover
        self.cache.release(top)

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

    @torch.inference_mode()
    def step(self, jobs: Sequence[ArJob]) -> None:
        for j in jobs:
            if j.slot is None and not j.done:
                try:
                    j.slot = self.cache.acquire()
                except Exception:
                    continue  # no free slot yet: it waits for one to free
                self.holders[j.slot] = j
        chunks = dict(self._plan([j for j in jobs if j.slot is not None]))
        if not chunks:
            return
        # every slot in use is a row (jobs not advanced this step get no tokens), so the rows are slots 0..n-1
        order = [self.holders[s] for s in range(len(self.holders))]
        plan = [(j, chunks.get(j, [])) for j in order]
        rows = self.rows_builder([c for _, c in plan], [j.cached for j, _ in plan], [j.slot for j, _ in plan], self.device)
        logits = self.model.step(rows, self.cache)
        for j, c in plan:
            j.cached += len(c)
        ready = [i for i, (j, c) in enumerate(plan) if c and j.cached == len(j.prompt) + len(j.generated)]  # prompt done or decoded
        if not ready:
            return
        chosen = [plan[i][0] for i in ready]
        ids = self.sampler(logits[ready], [j.params for j in chosen], [len(j.generated) for j in chosen],
                           [j.prompt + j.generated for j in chosen]).tolist()
        for j, tok in zip(chosen, ids):
            if tok in j.stop:
                self.finish(j, "stop")
                continue
            j.generated.append(tok)
            if len(j.generated) >= j.max_new or j.cached + 1 >= self.cache.max_tokens:
                self.finish(j, "length")
