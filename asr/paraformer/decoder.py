"""FunASR's ``ParaformerSANMDecoder``: non-autoregressive, over the CIF token embeddings.

Per layer (note the feed-forward comes first and replaces x before the FSMN):
``t = FFN(LN1(x)); u = LN2(t); x = x + FSMN(u); x = x + CrossAttention(LN3(x), encoder output)``;
then one feed-forward-only layer (``decoders3``, no residual), ``after_norm`` and ``output_layer``.
Offline the FSMN is centred (or shifted by ``sanm_shfit``) over the token sequence; chunk by chunk it
is causal over the stream's token history (``chunk``), which the streaming model's config guarantees.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from legato.asr.paraformer.config import LN_EPS, ParaformerConfig
from legato.asr.paraformer.sanm import attend, fsmn_memory, heads


class DecoderFeedForward(nn.Module):
    """``W2(LN(relu(W1 u + b1)))``: the norm over the hidden width, and no bias on W2."""

    def __init__(self, d: int, ff: int):
        super().__init__()
        self.w_1 = nn.Linear(d, ff)
        self.norm = nn.LayerNorm(ff, eps=LN_EPS)
        self.w_2 = nn.Linear(ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.norm(torch.relu(self.w_1(x))))


class Fsmn(nn.Module):
    def __init__(self, d: int, kernel: int):
        super().__init__()
        self.fsmn_block = nn.Conv1d(d, d, kernel, groups=d, bias=False)


class CrossAttention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.heads = n_heads
        self.linear_q = nn.Linear(d, d)
        self.linear_k_v = nn.Linear(d, 2 * d)
        self.linear_out = nn.Linear(d, d)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.linear_k_v(memory).chunk(2, dim=-1)
        return heads(k, self.heads), heads(v, self.heads)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        return self.linear_out(attend(heads(self.linear_q(x), self.heads), keys, values, key_mask))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ParaformerConfig):
        super().__init__()
        d = cfg.d_model
        self.shift = cfg.decoder_shift
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d, eps=LN_EPS) for _ in range(3))
        self.feed_forward = DecoderFeedForward(d, cfg.decoder_ff)
        self.self_attn = Fsmn(d, cfg.decoder_kernel)
        self.src_attn = CrossAttention(d, cfg.heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        u = self.norm2(self.feed_forward(self.norm1(x)))
        x = x + fsmn_memory(self.self_attn.fsmn_block, u, self.shift, mask)
        keys, values = self.src_attn.keys_values(memory)
        return x + self.src_attn(self.norm3(x), keys, values, memory_mask)

    def chunk(self, x: torch.Tensor, history: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens x (B, N, d) of this chunk; ``history`` (B, k-1, d) the previous FSMN inputs (zeros before the
        first token); keys/values (B, H, S, dh) of cached + current memory. Returns the output and the FSMN
        inputs u (B, N, d) (the caller keeps the last k-1 per stream)."""
        u = self.norm2(self.feed_forward(self.norm1(x)))
        conv = self.self_attn.fsmn_block
        c = F.conv1d(torch.cat([history, u], dim=1).transpose(1, 2), conv.weight, groups=conv.groups).transpose(1, 2)
        x = x + c + u
        return x + self.src_attn(self.norm3(x), keys, values, key_mask), u


class LastLayer(nn.Module):
    """``decoders3``: feed-forward only, no residual."""

    def __init__(self, cfg: ParaformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.feed_forward = DecoderFeedForward(cfg.d_model, cfg.decoder_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.norm1(x))


class SanmDecoder(nn.Module):
    def __init__(self, cfg: ParaformerConfig):
        super().__init__()
        self.cfg = cfg
        self.decoders = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.decoder_blocks)])
        self.decoders3 = nn.ModuleList([LastLayer(cfg)])
        self.after_norm = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.output_layer = nn.Linear(cfg.d_model, cfg.vocab_size)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.after_norm(self.decoders3[0](x)))

    def forward(self, tokens: torch.Tensor, counts: torch.Tensor, memory: torch.Tensor, memory_lengths: torch.Tensor) -> torch.Tensor:
        """CIF embeddings (B, N, d) with ``counts`` valid per row, encoder output (B, T, d) -> logits (B, N, V)."""
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < counts[:, None]
        memory_mask = torch.arange(memory.shape[1], device=memory.device)[None] < memory_lengths[:, None]
        x = tokens
        for layer in self.decoders:
            x = layer(x, mask, memory, memory_mask)
        return self.head(x)
