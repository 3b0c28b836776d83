"""Token sampling for autoregressive TTS, batched, each row with its own settings and seed.

Per row: repetition penalty (as transformers: over every token of the row's sequence, prompt included; a
positive logit is divided by the penalty, a negative one multiplied), temperature, top-k, top-p (smallest set
whose probability reaches p, at least one token), then a draw. Greedy when temperature is 0.

The draw is Gumbel-max with *counter-based* noise: the uniform for (row, token) is a hash of the request's
seed, its step number and the token id (splitmix64 in int64 arithmetic). So a request's samples depend only
on its seed and its own logits, never on which other requests share the batch, and no per-row generator loop
runs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # Llasa's official call
    top_p: float = 1.0
    top_k: int = 50  # 0: off. Llasa's call sets none, so transformers' default of 50 applies
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError(f"bad sampling settings {self}")


def _srl(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def uniforms(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B,) int64 seeds and step numbers -> (B, vocab) float64 uniforms in (0, 1), a pure function of its inputs."""
    tok = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    x = seeds[:, None] * _GOLDEN + steps[:, None] * _M2 + tok[None] + 1
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    x = x ^ _srl(x, 31)
    return (_srl(x, 11).double() + 0.5) / float(1 << 53)


def penalise(logits: torch.Tensor, history: list[list[int]], penalties: list[float]) -> torch.Tensor:
    rows = [i for i, p in enumerate(penalties) if p != 1.0 and history[i]]
    for i in rows:  # only rows that ask for it (Llasa's default is 1.0)
        ids = torch.tensor(sorted(set(history[i])), device=logits.device)
        s = logits[i, ids]
        logits[i, ids] = torch.where(s < 0, s * penalties[i], s / penalties[i])
    return logits


def process(logits: torch.Tensor, params: list[SamplingParams], history: list[list[int]] | None = None) -> torch.Tensor:
    """(B, V) logits -> the scores the draw uses (transformers' order: penalty, temperature, top-k, top-p); removed
    tokens are -inf. Greedy rows (temperature 0) are returned unscaled."""
    logits = logits.float().clone()
    if history is not None:
        logits = penalise(logits, history, [p.repetition_penalty for p in params])
    dev = logits.device
    temps = torch.tensor([p.temperature for p in params], device=dev)
    greedy = temps == 0
    logits = logits / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
    ks = [p.top_k for p in params]
    if any(ks):
        k = torch.tensor([kk if kk else logits.shape[1] for kk in ks], device=dev).clamp(max=logits.shape[1])
        kth = logits.topk(int(k.max()), dim=1).values.gather(1, (k - 1)[:, None])  # topk, not a full sort of the vocab
        logits = logits.masked_fill(logits < kth, float("-inf"))
    ps = torch.tensor([p.top_p for p in params], device=dev)
    if bool((ps < 1).any()):
        ordered, index = logits.sort(dim=1)  # ascending, as transformers' TopPLogitsWarper
        cum = ordered.softmax(dim=1).cumsum(dim=1)
        drop = cum <= (1 - ps)[:, None]
        drop[:, -1] = False  # keep at least the most likely token
        logits = logits.masked_fill(drop.scatter(1, index, drop), float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: list[SamplingParams], steps: list[int], history: list[list[int]] | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids."""
    dev = logits.device
    greedy = torch.tensor([p.temperature == 0 for p in params], device=dev)
    logits = process(logits, params, history)
    u = uniforms(torch.tensor([p.seed for p in params], device=dev), torch.tensor(steps, device=dev), logits.shape[1])
    gumbel = -torch.log(-torch.log(u))
    drawn = (logits.double() + gumbel).argmax(dim=1)
    return torch.where(greedy, logits.argmax(dim=1), drawn)
