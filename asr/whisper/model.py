"""Whisper encoder-decoder in plain PyTorch.

Module names follow OpenAI's checkpoints (``encoder.blocks.N.attn.query``,
``decoder.token_embedding``, ...) so an OpenAI ``.pt`` state dict loads as is;
other formats (CTranslate2 ``model.bin``) map onto these names in their loader.

Shapes: mel (B, n_mels, 3000) -> audio features (B, 1500, d_model);
tokens (B, T) + audio features -> logits (B, T, n_vocab).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-5
MAX_TIMESCALE = 10000  # sinusoid of the encoder positions


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of one Whisper model (OpenAI's ``ModelDimensions`` field names)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500  # encoder frames per 30 s window (3000 mel frames, conv stride 2)
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4
    n_vocab: int = 51864
    n_text_ctx: int = 448  # decoder positions
    n_text_state: int = 384
    n_text_head: int = 6
    n_text_layer: int = 4

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """(length, channels) encoder position table: sin on the first half, cos on the second."""
    log_step = np.log(MAX_TIMESCALE) / (channels // 2 - 1)
    inv = torch.exp(-log_step * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, d) -> keys, values (B, H, S, d_head)."""
        return self.heads(self.key(x)), self.heads(self.value(x))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
        q = self.heads(self.query(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] > 1)
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))


class ResidualBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, cross_attention: bool):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_head)
        self.attn_ln = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.cross_attn = MultiHeadAttention(d_model, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.mlp_ln = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, dims: WhisperDims):
        super().__init__()
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(ResidualBlock(d, dims.n_audio_head, cross_attention=False) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, 2 * T) log-mel -> (B, T, d_model); T <= n_audio_ctx."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        for block in self.blocks:
            h = block.attn_ln(x)
            x = x + block.attn.attend(h, *block.attn.project_kv(h))
            x = block._mlp(x)
        return self.ln_post(x)


@dataclass
class DecoderCache:
    """Keys and values of the decoder for a batch of hypotheses.

    ``self_kv``: per layer (keys, values) (B, H, capacity, d_head), first
    ``length`` positions filled; ``cross_kv``: per layer the projected audio
    features (B, H, n_audio_ctx, d_head), computed once per window.
    """

    self_kv: list[tuple[torch.Tensor, torch.Tensor]]
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]
    length: int = 0
    # Rows of different prompt lengths are left-padded: row b's first ``pad[b]``
    # positions hold no token (never attended), and its token at cache index i
    # sits at position i - pad[b]. None: no padding.
    pad: torch.Tensor | None = None

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep hypotheses ``rows`` (beam search), in that order."""
        self.self_kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.self_kv]
        self.cross_kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cross_kv]
        if self.pad is not None:
            self.pad = self.pad.index_select(0, rows)


class TextDecoder(nn.Module):
    def __init__(self, dims: WhisperDims):
        super().__init__()
        d = dims.n_text_state
        self.n_ctx = dims.n_text_ctx
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, d))
        self.blocks = nn.ModuleList(ResidualBlock(d, dims.n_text_head, cross_attention=True) for _ in range(dims.n_text_layer))
        self.ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def new_cache(self, audio_features: torch.Tensor, pad: torch.Tensor | None = None) -> DecoderCache:
        """Project the audio features for every layer's cross-attention; empty self-attention cache.

        ``pad`` (B,) int64: left padding of each row's prompt (batches of streams with different prompts).
        """
        b = audio_features.shape[0]
        self_kv = []
        cross_kv = []
        for block in self.blocks:
            h, dh = block.attn.n_head, self.token_embedding.embedding_dim // block.attn.n_head
            shape = (b, h, self.n_ctx, dh)
            self_kv.append((audio_features.new_zeros(shape), audio_features.new_zeros(shape)))
            cross_kv.append(block.cross_attn.project_kv(audio_features))
        return DecoderCache(self_kv, cross_kv, 0, pad)

    def forward(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """tokens (B, T) continuing the cached positions -> logits (B, T, n_vocab) float32."""
        start, t = cache.length, tokens.shape[1]
        if start + t > self.n_ctx:
            raise ValueError(f"decoder context is {self.n_ctx} tokens; {start + t} requested")
        index = torch.arange(start, start + t, device=tokens.device)
        if cache.pad is None:
            x = self.token_embedding(tokens) + self.positional_embedding[start : start + t]
            mask = None if t == 1 else index[:, None] >= torch.arange(start + t, device=tokens.device)[None, :]
        else:
            positions = (index[None, :] - cache.pad[:, None]).clamp(min=0)  # (B, t)
            x = self.token_embedding(tokens) + self.positional_embedding[positions]
            mask = _padded_causal_mask(index, start + t, cache.pad)
        for i, block in enumerate(self.blocks):
            h = block.attn_ln(x)
            k_new, v_new = block.attn.project_kv(h)
            keys, values = cache.self_kv[i]
            keys[:, :, start : start + t] = k_new
            values[:, :, start : start + t] = v_new
            x = x + self._self_attend(block.attn, h, keys[:, :, : start + t], values[:, :, : start + t], mask)
            x = x + block.cross_attn.attend(block.cross_attn_ln(x), *cache.cross_kv[i])
            x = block._mlp(x)
        cache.length = start + t
        x = self.ln(x)
        return (x @ self.token_embedding.weight.to(x.dtype).T).float()

    @staticmethod
    def _self_attend(attn: MultiHeadAttention, h: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return attn.attend(h, keys, values)
        q = attn.heads(attn.query(h))
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        b, nh, t, dh = y.shape
        return attn.out(y.transpose(1, 2).reshape(b, t, nh * dh))


def _padded_causal_mask(index: torch.Tensor, keys: int, pad: torch.Tensor) -> torch.Tensor:
    """(B, 1, t, keys) bool: query i sees keys j <= i that hold tokens; a padding query sees itself
    (its output is unused, but must stay finite: masked keys' values are multiplied by 0)."""
    j = torch.arange(keys, device=index.device)
    causal = j[None, None, :] <= index[None, :, None]  # (1, t, keys)
    real = j[None, None, :] >= pad[:, None, None]  # (B, 1, keys)
    itself = j[None, None, :] == index[None, :, None]
    return ((causal & real) | itself)[:, None]


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    @torch.inference_mode()
    def logits(self, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, n_vocab) for a mel window and token prefix."""
        cache = self.decoder.new_cache(self.encoder(mel))
        return self.decoder(tokens, cache)
