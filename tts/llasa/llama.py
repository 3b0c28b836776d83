"""Our Llama decoder (Hugging Face layout): RMSNorm, rotary positions with Llama 3 frequency scaling,
grouped-query attention, SwiGLU; one batched step over ragged rows with a slot KV cache.

``step`` takes, per row, any number of new tokens after the row's cached prefix: a chunk of a prompt being
prefilled, or the one token of a decode step. All rows' tokens, flattened (``PackedBatch``), go through one
forward (Dynamic SplitFuse: a prefill chunk and the running decodes share the step); attention reads each
row's keys/values in place from its cache slot (``kernels/slot_attention``). Module names follow the HF state dict
(``model.layers.0.self_attn.q_proj.weight``, ...), so ``model.safetensors`` loads as is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from legato.kernels import dispatch, slot_attention
from legato.kernels.slot_attention import tokens_per_block
from legato.stream.kv_cache import KvCache
from legato.stream.packed_batch import PackedBatch


class UnsupportedLlamaError(ValueError):
    code = "unsupported_model"


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None  # (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 131072

    @classmethod
    def from_hf(cls, conf: Mapping[str, Any]) -> "LlamaConfig":
        if conf.get("model_type", "llama") != "llama":
            raise UnsupportedLlamaError(f"model_type: {conf.get('model_type')!r} is not a Llama")
        for field, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
            if conf.get(field, want) != want:
                raise UnsupportedLlamaError(f"{field}: {conf.get(field)!r} is not supported (legato supports {want!r})")
        scaling = conf.get("rope_scaling")
        rope = None
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind == "default":
                rope = None
            elif kind != "llama3":
                raise UnsupportedLlamaError(f"rope_scaling.rope_type: {kind!r} is not supported (legato supports 'llama3')")
            else:
                rope = (float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"]),
                        int(scaling["original_max_position_embeddings"]))
        heads = int(conf["num_attention_heads"])
        return cls(
            vocab_size=int(conf["vocab_size"]), hidden_size=int(conf["hidden_size"]), intermediate_size=int(conf["intermediate_size"]),
            num_hidden_layers=int(conf["num_hidden_layers"]), num_attention_heads=heads,
            num_key_value_heads=int(conf.get("num_key_value_heads") or heads),
            head_dim=int(conf.get("head_dim") or int(conf["hidden_size"]) // heads),
            rms_norm_eps=float(conf.get("rms_norm_eps", 1e-6)), rope_theta=float(conf.get("rope_theta", 10000.0)), rope_scaling=rope,
            tie_word_embeddings=bool(conf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(conf.get("max_position_embeddings", 131072)),
        )


def inv_frequencies(cfg: LlamaConfig) -> torch.Tensor:
    """Rotary inverse frequencies (head_dim / 2,), float32, with Llama 3's scaling of long wavelengths."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
    if cfg.rope_scaling is None:
        return inv
    factor, low, high, old = cfg.rope_scaling
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)  # long wavelengths: slowed by factor
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled  # in between: blended
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rotary(positions: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (..., head_dim) at integer positions, computed in float32 as transformers does."""
    freqs = positions.float()[..., None] * inv.to(positions.device)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class RmsNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)


class Mlp(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = Mlp(cfg)
        self.input_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaBody(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", inv_frequencies(cfg), persistent=False)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "Llama":
        """A Hugging Face Llama folder: ``config.json`` and ``model.safetensors`` (or sharded with an index)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = LlamaConfig.from_hf(json.loads((folder / "config.json").read_text()))
        files = sorted(folder.glob("model*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder}: no model.safetensors")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        model = cls(cfg)
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise UnsupportedLlamaError(f"{folder}: weights do not fit config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model.to(device=device, dtype=dtype).eval()

    def new_cache(self, slots: int, max_tokens: int, dtype: torch.dtype | None = None) -> KvCache:
        p = next(self.parameters())
        return KvCache(self.cfg.num_hidden_layers, self.cfg.num_key_value_heads, self.cfg.head_dim, slots, max_tokens,
                       dtype=dtype or p.dtype, device=p.device)

    def pack(self, chunks: list[list[int]], starts: list[int], slots: list[int]) -> PackedBatch:
        """A step's input: per row, new tokens ``chunks[r]`` after ``starts[r]`` cached ones, in KV slot ``slots[r]``."""
        group = self.cfg.num_attention_heads // self.cfg.num_key_value_heads
        return PackedBatch.build(chunks, starts, slots, self.inv_freq.device, tokens_per_block(group))

    @torch.inference_mode()
    def step(self, batch: PackedBatch, cache: KvCache, all_logits: bool = False) -> torch.Tensor:
        """Run every row's new tokens after its cached prefix; store their keys/values.

        Returns the logits (B, V) after each row's last new token (``all_logits``: (N, V) for every token)."""
        n = batch.size
        x = self.model.embed_tokens(batch.tokens)
        cos, sin = rotary(batch.positions, self.inv_freq, x.dtype)
        cos, sin = cos[:, None], sin[:, None]
        for i, layer in enumerate(self.model.layers):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            q = att.q_proj(h).view(n, att.heads, att.head_dim)
            k = att.k_proj(h).view(n, att.kv_heads, att.head_dim)
            v = att.v_proj(h).view(n, att.kv_heads, att.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            cache.write(i, batch.slots, batch.positions, k, v)
            out = self._attend(q, cache.k[i], cache.v[i], batch)
            x = x + att.o_proj(out.reshape(n, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.model.norm(x)
        return self.lm_head(x if all_logits else x[batch.last])

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        out = torch.empty_like(q)
        scale = self.cfg.head_dim ** -0.5
        for blocks, tokens in ((batch.decode_blocks, 1), (batch.prefill_blocks, batch.block_tokens)):
            if blocks.shape[0]:
                dispatch.call(slot_attention.NAME, q.device, q, k, v, batch.slots, batch.positions, blocks, scale, tokens, out=out)
        return out
