"""Cache-aware FastConformer encoder (NeMo ``ConformerEncoder``), offline and streamed.

Layer (pre-norm, macaron)::

    x = x + FF1(LN(x)) / 2
    x = x + RelPosMHSA(LN(x))          # chunked_limited context
    x = x + ConvModule(LN(x))          # pointwise, GLU, causal depthwise k, norm, SiLU, pointwise
    x = x + FF2(LN(x)) / 2
    out = LN(x)

Streaming state per layer: the *projected* keys and values of the last
``max_left`` frames (NeMo caches the normalised layer input and re-projects it
every chunk; keys and values are pointwise in time, so projecting once gives
the same numbers) and the last ``kernel - 1`` inputs of the depthwise conv.
The key/value cache is a ring (frame ``f`` in slot ``f % max_left``): a step
reads it in place and overwrites the oldest slots with its own frames
(``kernels/relpos_attention``; the fused Triton kernel on GPU), so nothing is
shifted or concatenated. A step is one attention chunk of ``right + 1`` frames
for every row; the chunk sees the ``left`` cached frames (fewer at the start:
``frames``) and itself, which is exactly NeMo's chunked_limited mask when ``left`` is a
multiple of the chunk. Rows may use different lookaheads only in different
steps (the chunk width differs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from legato.asr.fastconformer.config import FastConformerConfig, Lookahead
from legato.asr.fastconformer.subsampling import DwStridingSubsampling
from legato.kernels import add_norm, causal_dwconv, dispatch, relpos_attention
from legato.stream.layers.attention import RelPositionBias
from legato.stream.module import StreamingModule
from legato.stream.state import StreamState

LAYER_NORM_EPS = 1e-5
FF_RESIDUAL_SCALE = 0.5  # macaron: each feed-forward adds half its output


@dataclass(frozen=True, eq=False)
class LayerCache(StreamState):
    keys: torch.Tensor  # (B, H, max_left, d_head) projected keys, a ring: frame f in slot f % max_left
    values: torch.Tensor  # (B, H, max_left, d_head)
    conv: torch.Tensor  # (B, kernel - 1, d_model) depthwise-conv inputs (gated), oldest first


@dataclass(frozen=True, eq=False)
class EncoderState(StreamState):
    subsampling: tuple[torch.Tensor, ...]  # per stage (B, 2, F_in, C_in) cached input frames, channels-last
    layers: tuple[LayerCache, ...]
    frames: torch.Tensor  # (B,) int64 encoder frames written to the attention cache so far
    mel_seen: torch.Tensor  # (B,) int64 mel frames consumed


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.silu(self.linear1(x)))


class RelPosSelfAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (NeMo ``RelPositionMultiHeadAttention``)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.rel = RelPositionBias(d_model, n_heads)  # linear_pos, pos_bias_u, pos_bias_v

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_head).transpose(1, 2)

    def _attend(self, q, k, v, rel: torch.Tensor, lo: int, hi: int, visible: torch.Tensor) -> torch.Tensor:
        """q (B,H,T,D), k/v (B,H,S,D), rel (B,T,S) query-minus-key distance in [lo, hi], visible (B,T,S)."""
        out = self.rel.attend(q, k, v, rel, lo, hi, visible[:, None])
        b, _, t, _ = out.shape
        return self.linear_out(out.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Offline: x (B, T, d), visible (B, T, T)."""
        t = x.shape[1]
        q, k, v = (self._heads(lin(x)) for lin in (self.linear_q, self.linear_k, self.linear_v))
        pos = torch.arange(t, device=x.device)
        rel = (pos[:, None] - pos[None, :]).expand(x.shape[0], t, t)
        return self._attend(q, k, v, rel, -(t - 1), t - 1, visible)

    def step(self, x: torch.Tensor, cache: LayerCache, frames: torch.Tensor, valid: torch.Tensor, left: int, rows=None) -> torch.Tensor:
        """x (B, T, d): one chunk; attends to the last ``left`` cached frames and the chunk's first ``valid`` frames,
        then writes its keys/values into the ring (pool rows ``rows``, if given)."""
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, t, self.n_heads, self.d_head) for lin in (self.linear_q, self.linear_k, self.linear_v))
        pos = self.rel.projected(-(t - 1), left + t - 1, q.dtype)
        out = dispatch.call(relpos_attention.NAME, x.device, q, k, v, cache.keys, cache.values, frames, valid, pos,
                            self.rel.pos_bias_u, self.rel.pos_bias_v, left, self.d_head ** -0.5, rows)
        return self.linear_out(out.reshape(b, t, -1))


class ConvModule(nn.Module):
    """pointwise (2d) -> GLU -> causal depthwise (kernel k) -> norm -> SiLU -> pointwise. Keys as NeMo ``conv``.

    Batch norm (eval statistics) is folded into the depthwise conv at load, so
    ``norm`` is the identity then; layer norm stays a LayerNorm over channels.
    """

    def __init__(self, d_model: int, kernel: int, norm: str):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model)
        self.norm: nn.Module = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS) if norm == "layer_norm" else nn.Identity()
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1)
        self.context = kernel - 1

    def _glu(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> (B, d, T) gated, frames >= valid zeroed (NeMo's pad mask before the depthwise conv)."""
        w = self.pointwise_conv1
        h = F.glu(F.linear(x, w.weight[:, :, 0], w.bias), dim=-1)
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < valid[:, None]
        return (h * keep[:, :, None].to(h.dtype)).transpose(1, 2)

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        """(B, d, T) depthwise output -> (B, T, d)."""
        h = F.silu(self.norm(h.transpose(1, 2)))
        w = self.pointwise_conv2
        return F.linear(h, w.weight[:, :, 0], w.bias)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = F.pad(self._glu(x, valid), (self.context, 0))
        return self._tail(self.depthwise_conv(h))

    def step(self, x: torch.Tensor, cache: LayerCache, valid: torch.Tensor, rows=None) -> torch.Tensor:
        """GLU, the depthwise conv over the cached inputs, norm and SiLU in one fused call (``kernels/causal_dwconv``)."""
        w1, w2 = self.pointwise_conv1, self.pointwise_conv2
        norm = self.norm if isinstance(self.norm, nn.LayerNorm) else None
        nw, nb = (None, None) if norm is None else (norm.weight, norm.bias)  # batch norm: folded into the conv
        h = dispatch.call(causal_dwconv.NAME, x.device, F.linear(x, w1.weight[:, :, 0], w1.bias), cache.conv, valid,
                          self.depthwise_conv.weight[:, 0], self.depthwise_conv.bias, nw, nb, LAYER_NORM_EPS, rows)
        return F.linear(h, w2.weight[:, :, 0], w2.bias)


class ConformerLayer(nn.Module):
    def __init__(self, cfg: FastConformerConfig):
        super().__init__()
        d = cfg.d_model
        self.norm_feed_forward1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.feed_forward1 = FeedForward(d, d * cfg.ff_expansion_factor)
        self.norm_self_att = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.self_attn = RelPosSelfAttention(d, cfg.n_heads)
        self.norm_conv = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.conv = ConvModule(d, cfg.conv_kernel_size, cfg.conv_norm_type)
        self.norm_feed_forward2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.feed_forward2 = FeedForward(d, d * cfg.ff_expansion_factor)
        self.norm_out = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def _run(self, x: torch.Tensor, attend, convolve) -> torch.Tensor:
        x = x + FF_RESIDUAL_SCALE * self.feed_forward1(self.norm_feed_forward1(x))
        x = x + attend(self.norm_self_att(x))
        x = x + convolve(self.norm_conv(x))
        x = x + FF_RESIDUAL_SCALE * self.feed_forward2(self.norm_feed_forward2(x))
        return self.norm_out(x)

    def forward(self, x: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self._run(x, lambda h: self.self_attn(h, visible), lambda h: self.conv(h, valid))

    def step(self, x, cache: LayerCache, frames, valid, left: int, rows=None) -> torch.Tensor:
        """``_run`` with each residual add fused with the layer norm after it (``kernels/add_norm``)."""
        h = self.norm_feed_forward1(x)
        x, h = self._add_norm(x, self.feed_forward1(h), FF_RESIDUAL_SCALE, self.norm_self_att)
        x, h = self._add_norm(x, self.self_attn.step(h, cache, frames, valid, left, rows), 1.0, self.norm_conv)
        x, h = self._add_norm(x, self.conv.step(h, cache, valid, rows), 1.0, self.norm_feed_forward2)
        return self._add_norm(x, self.feed_forward2(h), FF_RESIDUAL_SCALE, self.norm_out)[1]

    @staticmethod
    def _add_norm(x, y, scale: float, norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
        return dispatch.call(add_norm.NAME, x.device, x, y, scale, norm.weight, norm.bias, norm.eps)


def chunked_limited_visible(length: torch.Tensor, t: int, la: Lookahead) -> torch.Tensor:
    """(B, T, T) bool: query i sees key j iff both are valid and 0 <= chunk(i) - chunk(j) <= left_chunks."""
    chunk = torch.arange(t, device=length.device) // la.chunk_frames
    diff = chunk[:, None] - chunk[None, :]
    in_context = (diff >= 0) & (diff <= la.left_chunks)
    ok = torch.arange(t, device=length.device)[None, :] < length[:, None]
    return in_context[None] & ok[:, :, None] & ok[:, None, :]


class FastConformerEncoder(StreamingModule):
    """(B, T_mel, feat_in) log-mel -> (B, T_mel / factor, d_model). Parameter names follow NeMo's encoder."""

    time_axis = 1

    def __init__(self, cfg: FastConformerConfig):
        super().__init__()
        self.cfg = cfg
        self.pre_encode = DwStridingSubsampling(cfg)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.n_layers))
        self.xscale = math.sqrt(cfg.d_model) if cfg.xscaling else 1.0
        # dtype of the attention key/value ring; None: the weights'. torch.float8_e4m3fn halves the state of a
        # stream (2.44 of its 2.65 MB in bf16 for FastConformer-L), the wall for streams per GPU.
        self.kv_dtype: torch.dtype | None = None

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor, lookahead: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline with the chunked_limited mask of ``lookahead``: mel (B, T, F), lengths (B,) -> (B, T', d), (B,)."""
        x, valid = self.pre_encode(mel, lengths)
        x = x * self.xscale
        visible = chunked_limited_visible(valid, x.shape[1], self.cfg.lookahead(lookahead))
        for layer in self.layers:
            x = layer(x, visible, valid)
        return x, valid

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> EncoderState:
        device = device or self.param_device()
        dtype = self.pre_encode.out.weight.dtype
        cfg = self.cfg

        def zeros(*shape: int, dt=dtype) -> torch.Tensor:
            return torch.zeros(shape, device=device, dtype=dt)

        kv = (batch_size, cfg.n_heads, cfg.max_left, cfg.d_head)
        kv_dtype = self.kv_dtype or dtype
        return EncoderState(
            subsampling=tuple(zeros(*s) for s in self.pre_encode.context_shapes(batch_size)),
            layers=tuple(
                LayerCache(zeros(*kv, dt=kv_dtype), zeros(*kv, dt=kv_dtype), zeros(batch_size, cfg.conv_kernel_size - 1, cfg.d_model)) for _ in range(cfg.n_layers)
            ),
            frames=zeros(batch_size, dt=torch.long),
            mel_seen=zeros(batch_size, dt=torch.long),
        )

    def expected_mel(self, lookahead: int, first: bool) -> int:
        la = self.cfg.lookahead(lookahead)
        return self.cfg.first_chunk_mel(la) if first else self.cfg.chunk_mel(la)

    def stream_step(
        self,
        mel: torch.Tensor,
        state: EncoderState,
        *,
        lookahead: int,
        first: bool,
        valid: torch.Tensor | None = None,
        final: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One attention chunk for every row.

        mel (B, T_mel, F) with T_mel = ``expected_mel(lookahead, first)``;
        ``first``: the rows have seen nothing yet; ``final`` (B,) bool: the
        row's stream ends with this chunk, whose ``valid`` real frames are
        fewer than T_mel (the rest padding). Returns (B, right + 1, d_model)
        and the valid output frames (B,).

        ``rows`` (B,) int64 distinct: ``state`` is a pool's (any number of
        rows) and batch row b's stream is pool row ``rows[b]``, read and
        updated in place by the kernels (no gathered working copy; a step
        that raises part way leaves those rows part-updated).
        """
        want = self.expected_mel(lookahead, first)
        if mel.shape[1] != want:
            raise ValueError(f"lookahead {lookahead} {'first' if first else 'later'} step needs {want} mel frames, got {mel.shape[1]}")
        if valid is None:
            valid = torch.full((mel.shape[0],), want, device=mel.device, dtype=torch.long)
        la = self.cfg.lookahead(lookahead)
        seen = state.mel_seen if rows is None else state.mel_seen[rows]
        x, out_valid = self.pre_encode.step(mel, list(state.subsampling), seen, valid, first, final, rows)
        x = x * self.xscale
        for layer, cache in zip(self.layers, state.layers):
            x = layer.step(x, cache, state.frames, out_valid, la.left, rows)
        if rows is None:
            state.frames.add_(x.shape[1])
            state.mel_seen.add_(valid)
        else:
            state.frames.index_add_(0, rows, torch.full_like(valid, x.shape[1]))
            state.mel_seen.index_add_(0, rows, valid.to(state.mel_seen.dtype))
        return x, out_valid
