"""F5-TTS's diffusion transformer (DiT): predicts the flow ``d mel / d t`` for a noisy mel, a reference mel and text.

Layout (shapes: B batch, T mel frames, N text symbols, D = ``dim``, E = ``text_dim``, M = 100 mel bins):

* time: sinusoidal features of ``t * 1000`` (256) -> Linear, SiLU, Linear -> (B, D)
* text: ids + 1 (0 = filler) -> embedding (B, T, E), cut or zero-padded to T frames, + a sinusoid,
  ConvNeXt V2 blocks (depthwise conv 7, LayerNorm, Linear, GELU, GRN, Linear; residual)
* input: Linear([x, cond, text]) (B, T, D) + grouped conv position embedding (2 x conv 31, Mish)
* ``depth`` DiT blocks: AdaLN-zero modulation from the time embedding (shift/scale/gate for attention and
  feed-forward), full self-attention with interleaved rotary positions, tanh-GELU feed-forward
* final AdaLN (scale, shift) and Linear to M bins.

Parameter names are legato's; ``loader.py`` holds the one table from F5-TTS's keys to these.
Batch rows shorter than T carry a ``mask`` (B, T): padded frames are zeroed after the conv position
embedding and after every attention output, and the text of each row is cut to its own length, as in
F5-TTS; attention itself is unmasked (``attn_mask_enabled: False`` in every official config).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from legato.tts.f5.config import CONV_POS_GROUPS, CONV_POS_KERNEL, TEXT_CONV_MULT, TIME_FREQ_DIM, F5Config

LN_EPS = 1e-6  # every LayerNorm/RMSNorm in the F5-TTS DiT
GRN_EPS = 1e-6
ROPE_BASE = 10_000.0


def sinusoid_table(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(n,) positions -> (n, dim) = [cos(p * f_i), sin(p * f_i)], f_i = 10000^(-2i/dim): the text position signal."""
    freqs = 1.0 / (ROPE_BASE ** (torch.arange(0, dim, 2, device=positions.device)[: dim // 2].float() / dim))
    angles = torch.outer(positions.float(), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rotary_angles(length: int, dim_head: int, device: torch.device) -> torch.Tensor:
    """(T, dim_head) angles, each frequency repeated for its (even, odd) pair, as x-transformers lays them out."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, dim_head, 2, device=device).float() / dim_head))
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    return angles.repeat_interleave(2, dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin). x: (..., T, dh); cos/sin: (T, dh)."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(TIME_FREQ_DIM, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) flow time in [0, 1] -> (B, D)."""
        half = TIME_FREQ_DIM // 2
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        angles = 1000.0 * t[:, None] * freqs[None]  # F5-TTS scales t by 1000 like DDPM step indices
        features = torch.cat((angles.sin(), angles.cos()), dim=-1).to(t.dtype)
        return self.fc2(F.silu(self.fc1(features)))


class GRN(nn.Module):
    """ConvNeXt V2 global response normalisation; the norm runs over time (axis 1), so padding counts."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=1, keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + GRN_EPS)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, E) -> (B, T, E)."""
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        h = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(h)))))
        return x + h


class TextEmbedding(nn.Module):
    def __init__(self, cfg: F5Config):
        super().__init__()
        self.mask_padding = cfg.text_mask_padding
        self.table = nn.Embedding(cfg.text_num_embeds + 1, cfg.text_dim)  # row 0: filler and batch padding
        self.blocks = nn.ModuleList(
            ConvNeXtV2Block(cfg.text_dim, cfg.text_dim * TEXT_CONV_MULT) for _ in range(cfg.conv_layers)
        )

    def forward(self, text: torch.Tensor, lens: torch.Tensor, length: int, drop_text: bool = False) -> torch.Tensor:
        """text (B, N) int64, -1 = padding; lens (B,) valid frames per row; -> (B, length, E).

        Text longer than its row's frames is cut; frames past the text get the filler symbol 0."""
        ids = (text + 1)[:, :length]
        ids = F.pad(ids, (0, length - ids.shape[1]), value=0)
        valid = torch.arange(length, device=ids.device)[None] < lens[:, None]  # (B, T)
        ids = ids.masked_fill(~valid, 0)
        filler = ids == 0  # computed before the CFG drop, so dropped text keeps the real text's padding mask
        if drop_text:
            ids = torch.zeros_like(ids)
        h = self.table(ids).masked_fill(~valid[..., None], 0.0)
        if len(self.blocks):
            h = h + sinusoid_table(torch.arange(length, device=ids.device), h.shape[-1])[None] * valid[..., None]
            if self.mask_padding:
                h = h.masked_fill(filler[..., None], 0.0)
            for block in self.blocks:
                h = block(h)
                if self.mask_padding:
                    h = h.masked_fill(filler[..., None], 0.0)
        return h


class ConvPositionEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        pad = CONV_POS_KERNEL // 2
        self.conv1 = nn.Conv1d(dim, dim, CONV_POS_KERNEL, groups=CONV_POS_GROUPS, padding=pad)
        self.conv2 = nn.Conv1d(dim, dim, CONV_POS_KERNEL, groups=CONV_POS_GROUPS, padding=pad)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D), mask (B, T) -> (B, T, D); padded frames are zero before and after each conv."""
        keep = mask[:, None, :]
        h = x.transpose(1, 2).masked_fill(~keep, 0.0)
        h = F.mish(self.conv1(h).masked_fill(~keep, 0.0))
        h = F.mish(self.conv2(h).masked_fill(~keep, 0.0))
        return h.transpose(1, 2)


class InputEmbedding(nn.Module):
    def __init__(self, cfg: F5Config):
        super().__init__()
        self.proj = nn.Linear(cfg.mel_dim * 2 + cfg.text_dim, cfg.dim)
        self.conv_pos = ConvPositionEmbedding(cfg.dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x, cond (B, T, M), text_emb (B, T, E), mask (B, T) -> (B, T, D)."""
        h = self.proj(torch.cat((x, cond, text_emb), dim=-1))
        return self.conv_pos(h, mask) + h


class Attention(nn.Module):
    def __init__(self, cfg: F5Config):
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads, self.dim_head, self.rope_heads = cfg.heads, cfg.dim_head, cfg.pe_attn_head
        self.to_q = nn.Linear(cfg.dim, inner)
        self.to_k = nn.Linear(cfg.dim, inner)
        self.to_v = nn.Linear(cfg.dim, inner)
        self.to_out = nn.Linear(inner, cfg.dim)
        if cfg.qk_norm == "rms_norm":
            self.q_norm = nn.RMSNorm(cfg.dim_head, eps=LN_EPS)
            self.k_norm = nn.RMSNorm(cfg.dim_head, eps=LN_EPS)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor, mask_keys: bool = False) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); rope = (cos, sin) each (T, dim_head).

        Official F5-TTS configs attend to padded frames too (``attn_mask_enabled: False``), so a padded
        row differs from the same row alone; ``mask_keys`` hides padding, making each row of a batch
        equal its unpadded single-row result (what continuous batching needs)."""
        b, t, _ = x.shape
        heads = (b, t, self.heads, self.dim_head)
        q, k, v = (p(x).view(heads).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope
        if self.rope_heads is None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        else:  # F5TTS_Base (v0) rotates only the first pe_attn_head heads
            n = self.rope_heads
            q = torch.cat((apply_rotary(q[:, :n], cos, sin), q[:, n:]), dim=1)
            k = torch.cat((apply_rotary(k[:, :n], cos, sin), k[:, n:]), dim=1)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :] if mask_keys else None)
        h = self.to_out(h.transpose(1, 2).reshape(b, t, -1))
        return h.masked_fill(~mask[..., None], 0.0)


class FeedForward(nn.Module):
    def __init__(self, cfg: F5Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.ff_dim)
        self.fc2 = nn.Linear(cfg.ff_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, cfg: F5Config):
        super().__init__()
        self.modulation = nn.Linear(cfg.dim, cfg.dim * 6)  # AdaLN-zero: shift/scale/gate for attn, then for ff
        self.attn = Attention(cfg)
        self.ff = FeedForward(cfg)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, rope, mask: torch.Tensor, mask_keys: bool = False) -> torch.Tensor:
        """x (B, T, D), t_emb (B, D) -> (B, T, D)."""
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.modulation(F.silu(t_emb))[:, None].chunk(6, dim=-1)
        h = F.layer_norm(x, x.shape[-1:], eps=LN_EPS) * (1 + scale_a) + shift_a
        x = x + gate_a * self.attn(h, rope, mask, mask_keys)
        h = F.layer_norm(x, x.shape[-1:], eps=LN_EPS) * (1 + scale_f) + shift_f
        return x + gate_f * self.ff(h)


class F5DiT(nn.Module):
    def __init__(self, cfg: F5Config):
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimeEmbedding(cfg.dim)
        self.text_embed = TextEmbedding(cfg)
        self.input_embed = InputEmbedding(cfg)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.long_skip = nn.Linear(cfg.dim * 2, cfg.dim, bias=False) if cfg.long_skip_connection else None
        self.final_modulation = nn.Linear(cfg.dim, cfg.dim * 2)  # final AdaLN: scale, then shift
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)

    def embed_text(self, text: torch.Tensor, mask: torch.Tensor, drop_text: bool = False) -> torch.Tensor:
        """text (B, N) with -1 padding, mask (B, T) -> (B, T, E). Constant over ODE steps: compute once per sample."""
        return self.text_embed(text, mask.sum(dim=1), mask.shape[1], drop_text=drop_text)

    def embed_input(self, x, cond, text_emb, mask, drop_audio_cond: bool = False) -> torch.Tensor:
        """x, cond (B, T, M), text_emb (B, T, E), mask (B, T) -> (B, T, D)."""
        if drop_audio_cond:
            cond = torch.zeros_like(cond)
        return self.input_embed(x, cond, text_emb, mask)

    def transform(self, h: torch.Tensor, time: torch.Tensor, mask: torch.Tensor, mask_keys: bool = False) -> torch.Tensor:
        """Embedded input h (B, T, D), time (B,), mask (B, T) -> predicted flow (B, T, M) (``mask_keys``: see Attention)."""
        t_emb = self.time_embed(time)
        cos_sin = rotary_angles(h.shape[1], self.cfg.dim_head, h.device)
        rope = (cos_sin.cos().to(h.dtype), cos_sin.sin().to(h.dtype))
        residual = h
        for block in self.blocks:
            h = block(h, t_emb, rope, mask, mask_keys)
        if self.long_skip is not None:
            h = self.long_skip(torch.cat((h, residual), dim=-1))
        scale, shift = self.final_modulation(F.silu(t_emb))[:, None].chunk(2, dim=-1)
        h = F.layer_norm(h, h.shape[-1:], eps=LN_EPS) * (1 + scale) + shift
        return self.proj_out(h)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        time: torch.Tensor,
        mask: torch.Tensor | None = None,
        drop_audio_cond: bool = False,
        drop_text: bool = False,
    ) -> torch.Tensor:
        """One flow prediction. x noisy mel (B, T, M); cond reference mel, zero where generated (B, T, M);
        text (B, N) int64 with -1 padding; time (B,) or scalar in [0, 1]; mask (B, T) valid frames (None: all).
        Returns (B, T, M)."""
        b, t = x.shape[:2]
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        time = time.expand(b) if time.ndim == 0 else time
        text_emb = self.embed_text(text, mask, drop_text)
        h = self.embed_input(x, cond, text_emb, mask, drop_audio_cond)
        return self.transform(h, time, mask)
