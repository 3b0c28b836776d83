"""Multi-head attention over a fixed-capacity ring KV cache.

The cache holds the *projected* keys and values of the last ``capacity``
tokens of each stream (rotated keys when rotary embeddings are used, since a
rotary score depends only on the position difference). Token at absolute
position ``t`` lives in ring slot ``t % capacity``; ``position`` (B,) counts
tokens seen, so rows of one batch may be at different positions.

A step attends from the chunk's queries to ``[ring slots | chunk tokens]``.
Which keys a query sees is a mask over absolute positions:

* ``left_context``: a query at ``p`` sees keys at ``p - left_context`` and later;
* ``causal=True``: and nothing after ``p``; ``causal=False``: the whole current
  chunk (chunk-wise lookahead as in chunked-limited attention).

Offline ``forward`` applies the same mask over the whole sequence with the chunk
boundaries given by ``chunk_size`` (causal masks ignore it), so streaming
equals offline when the stream is fed in chunks of that size; causal masks are
equal for any split.

Position information: ``rotary`` (RoPE applied to queries and keys) or
``rel_pos`` (Transformer-XL/NeMo relative positions: content bias ``u``,
position bias ``v`` and a projected sinusoid of the distance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from legato.stream.module import StreamingModule
from legato.stream.state import StreamState

NEG_INF = float("-inf")


class RotaryEmbedding(nn.Module):
    """RoPE over the last axis (rotate-half layout, as Llama)."""

    def __init__(self, dim_head: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim_head, 2, dtype=torch.float32) / dim_head))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, H, T, D); positions: (B, T) int64 absolute positions."""
        angles = positions.to(torch.float32)[:, None, :, None] * self.inv_freq  # (B, 1, T, D/2)
        cos = torch.cat([angles.cos()] * 2, dim=-1).to(x.dtype)
        sin = torch.cat([angles.sin()] * 2, dim=-1).to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class RelPositionBias(nn.Module):
    """Transformer-XL relative-position terms, as NeMo's RelPositionMultiHeadAttention.

    score = ((q + u) . k + (q + v) . W_pos emb(p_q - p_k)) / sqrt(d_head)
    with emb the sinusoid of the signed distance (sin on even, cos on odd features).
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_head))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_head))
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
        self.register_buffer("div_term", div, persistent=False)

    def sinusoid(self, distances: torch.Tensor) -> torch.Tensor:
        """distances: (R,) -> (R, d_model)."""
        angles = distances.to(torch.float32)[:, None] * self.div_term
        emb = torch.zeros(distances.shape[0], 2 * self.div_term.shape[0], device=distances.device)
        emb[:, 0::2] = angles.sin()
        emb[:, 1::2] = angles.cos()
        return emb

    def projected(self, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
        """(H, R, D) projected sinusoids of the distances lo..hi (R = hi - lo + 1), the same for every row."""
        p = self.linear_pos(self.sinusoid(torch.arange(lo, hi + 1, device=self.div_term.device)).to(dtype))
        return p.view(-1, self.n_heads, self.d_head).transpose(0, 1)

    def scores(self, q: torch.Tensor, k: torch.Tensor, rel: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """q: (B, H, T, D); k: (B, H, S, D); rel: (B, T, S) int64 = p_q - p_k, all in [lo, hi].

        Returns (B, H, T, S) unscaled scores. The distance range is given, not
        read from ``rel``, so a step never syncs with the device (graph capture).
        """
        content = torch.matmul(q + self.pos_bias_u[:, None, :].to(q.dtype), k.transpose(-1, -2))
        p = self.projected(lo, hi, q.dtype)  # (H, R, D)
        by_distance = torch.matmul(q + self.pos_bias_v[:, None, :].to(q.dtype), p.transpose(-1, -2))  # (B, H, T, R)
        index = (rel - lo)[:, None].expand(-1, q.shape[1], -1, -1)
        return content + torch.gather(by_distance, 3, index)

    def attend(self, q, k, v, rel: torch.Tensor, lo: int, hi: int, visible: torch.Tensor) -> torch.Tensor:
        """Scaled softmax attention with these scores over the ``visible`` (B, 1 or H, T, S) keys -> (B, H, T, D).

        A query that sees no key outputs 0 (NeMo's masked_fill after the softmax)."""
        scores = self.scores(q, k, rel, lo, hi) / math.sqrt(self.d_head)
        weights = torch.softmax(scores.masked_fill(~visible, NEG_INF), dim=-1).nan_to_num(0.0)
        return torch.matmul(weights, v)


@dataclass(frozen=True, eq=False)
class KVCacheState(StreamState):
    keys: torch.Tensor  # (B, H, capacity, D) projected (and rotated) keys
    values: torch.Tensor  # (B, H, capacity, D)
    position: torch.Tensor  # (B,) int64 tokens seen so far


class CachedAttention(StreamingModule):
    """Self-attention over (B, T, d_model) with a ring KV cache of ``left_context`` tokens."""

    time_axis = 1

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        left_context: int,
        causal: bool = True,
        chunk_size: int | None = None,
        position: str = "none",
        bias: bool = True,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        if left_context <= 0:
            raise ValueError("left_context must be positive (it sizes the cache)")
        if not causal and chunk_size is None:
            raise ValueError("non-causal (chunk-lookahead) attention needs chunk_size for its offline form")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.left_context, self.causal, self.chunk_size = left_context, causal, chunk_size
        self.capacity = left_context
        self.linear_q = nn.Linear(d_model, d_model, bias=bias)
        self.linear_k = nn.Linear(d_model, d_model, bias=bias)
        self.linear_v = nn.Linear(d_model, d_model, bias=bias)
        self.linear_out = nn.Linear(d_model, d_model, bias=bias)
        self.rotary = RotaryEmbedding(self.d_head) if position == "rotary" else None
        self.rel_pos = RelPositionBias(d_model, n_heads) if position == "relative" else None
        if position not in ("none", "rotary", "relative"):
            raise ValueError(f"position must be none, rotary or relative, got {position!r}")

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> KVCacheState:
        device = device or self.param_device()
        dtype = self.linear_k.weight.dtype
        shape = (batch_size, self.n_heads, self.capacity, self.d_head)
        return KVCacheState(
            keys=torch.zeros(shape, device=device, dtype=dtype),
            values=torch.zeros(shape, device=device, dtype=dtype),
            position=torch.zeros(batch_size, device=device, dtype=torch.long),
        )

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_head).transpose(1, 2)

    def _project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = (self._heads(lin(x)) for lin in (self.linear_q, self.linear_k, self.linear_v))
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        return q, k, v

    def _visible(self, q_pos: torch.Tensor, k_pos: torch.Tensor, chunk_end: torch.Tensor) -> torch.Tensor:
        """(B, T) query and (B, S) key positions -> (B, T, S) bool; chunk_end (B, T): first position after q's chunk."""
        qp, kp = q_pos[:, :, None], k_pos[:, None, :]
        seen = (kp >= 0) & (kp >= qp - self.left_context)
        return seen & ((kp <= qp) if self.causal else (kp < chunk_end[:, :, None]))

    def _attend(self, q, k, v, q_pos, k_pos, chunk_end, rel_range: tuple[int, int]) -> torch.Tensor:
        visible = self._visible(q_pos, k_pos, chunk_end)[:, None]
        if self.rel_pos is not None:
            out = self.rel_pos.attend(q, k, v, q_pos[:, :, None] - k_pos[:, None, :], *rel_range, visible)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        b, _, t, _ = out.shape
        return self.linear_out(out.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        pos = torch.arange(t, device=x.device).expand(b, t)
        q, k, v = self._project(x, pos)
        chunk = self.chunk_size or 1
        chunk_end = (pos // chunk + 1) * chunk
        return self._attend(q, k, v, pos, pos, chunk_end, (-(t - 1), t - 1))

    def step(self, x: torch.Tensor, state: KVCacheState) -> torch.Tensor:
        b, t, _ = x.shape
        start = state.position  # (B,)
        pos = start[:, None] + torch.arange(t, device=x.device)  # (B, T)
        q, k, v = self._project(x, pos)
        cap = self.capacity
        slots = torch.arange(cap, device=x.device)
        # Absolute position held by each ring slot: the latest t < start with t % cap == slot.
        ring_pos = start[:, None] - 1 - torch.remainder(start[:, None] - 1 - slots, cap)  # (B, cap), <0 = empty
        keys = torch.cat([state.keys, k], dim=2)
        values = torch.cat([state.values, v], dim=2)
        k_pos = torch.cat([ring_pos, pos], dim=1)
        chunk_end = (start + t)[:, None].expand(b, t)
        # Ring slots hold positions in [start - cap, start): distances span [-(t-1), cap + t - 1].
        out = self._attend(q, keys, values, pos, k_pos, chunk_end, (-(t - 1), cap + t - 1))
        # Write the chunk's newest min(t, cap) tokens into the ring.
        keep = min(t, cap)
        write = torch.remainder(pos[:, t - keep :], cap)[:, None, :, None].expand(-1, self.n_heads, -1, self.d_head)
        state.keys.scatter_(2, write, k[:, :, t - keep :])
        state.values.scatter_(2, write, v[:, :, t - keep :])
        state.position.add_(t)
        return out
