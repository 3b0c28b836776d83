"""Streaming Paraformer (FunASR's ``ParaformerStreaming``), chunk by chunk, batched across streams.

A chunk config ``[cs0, cs1, cs2]`` counts 60 ms LFR frames: each step takes ``cs1`` new frames (600 ms for
[0, 10, 5]) and sees a window of the ``cs0 + cs2`` frames kept from before plus the new ones (the last
``cs2`` are look-ahead: counted by the CIF in the next step). Per stream and per layer the encoder keeps the
projected keys/values of up to ``encoder_look_back * cs1`` past window frames, the CIF its residual weight and
partial token, the decoder the last ``kernel - 1`` FSMN inputs and the keys/values of the last
``decoder_look_back * cs1`` memory frames. All of it is fixed-shape, batch first (``ParaformerStreamState``),
so a state pool holds thousands of streams and one step serves any set of them.

What FunASR does, reproduced exactly (tests/fixtures/paraformer/NOTES.md): the first window's cached frames
are zeros and count as frames; attention is unmasked within a window; the FSMN sees the window only; alphas of
the first ``cs0`` frames (and, before the end, of the look-ahead frames) are zero; the decoder runs only when
a token fired and only then updates its caches; the end of a stream adds the 0.45 tail weight. When the last
piece of audio is shorter than one LFR hop (960 samples) FunASR runs the *tail chunk*: the kept window frames
again, scaled by sqrt(d) a second time (an in-place multiply on its cache) and without new audio; we do the same
so the tokens match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from legato.asr.paraformer.cif import integrate_and_fire
from legato.asr.paraformer.config import UnsupportedConfigError
from legato.asr.paraformer.model import Paraformer
from legato.stream.state import StreamState


@dataclass(frozen=True)
class ChunkConfig:
    left: int = 0  # cs0: frames of left context kept in the window
    stride: int = 10  # cs1: new frames per step (60 ms each)
    lookahead: int = 5  # cs2
    encoder_look_back: int = 4  # chunks of cached encoder keys/values
    decoder_look_back: int = 1

    def __post_init__(self) -> None:
        if self.stride < 1 or self.lookahead < 1 or self.left < 0:
            raise UnsupportedConfigError(f"chunk_size {list(self.sizes)}: needs stride >= 1, look-ahead >= 1, left >= 0")
        if self.encoder_look_back < 1 or self.decoder_look_back < 1:
            raise UnsupportedConfigError("encoder_chunk_look_back and decoder_chunk_look_back must be >= 1")

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.left, self.stride, self.lookahead

    @property
    def kept(self) -> int:
        return self.left + self.lookahead

    @property
    def window(self) -> int:
        return self.left + self.stride + self.lookahead

    @property
    def encoder_cache(self) -> int:
        return self.encoder_look_back * self.stride

    @property
    def decoder_cache(self) -> int:
        return self.decoder_look_back * self.stride


@dataclass(frozen=True, eq=False)
class ParaformerStreamState(StreamState):
    feats: torch.Tensor  # (B, kept, input_size) embedded frames carried into the next window
    position: torch.Tensor  # (B,) int64 LFR frames embedded so far
    enc_k: torch.Tensor  # (B, L, H, C, dh) right-aligned: the last enc_valid slots are real
    enc_v: torch.Tensor
    enc_valid: torch.Tensor  # (B,) int64
    cif_alpha: torch.Tensor  # (B,) residual weight
    cif_hidden: torch.Tensor  # (B, d) residual frame, normalised (FunASR keeps frame / alpha)
    dec_hist: torch.Tensor  # (B, Ld, k - 1, d) last FSMN inputs, zeros before the first token
    dec_k: torch.Tensor  # (B, Ld, H, C2, dh)
    dec_v: torch.Tensor
    dec_valid: torch.Tensor  # (B,) int64


@dataclass(frozen=True)
class ChunkOutput:
    encoder: torch.Tensor  # (B, W, d) the window's encoder output
    alphas: torch.Tensor  # (B, W) after the chunk masking
    embeds: torch.Tensor  # (B, N, d) fired tokens
    counts: torch.Tensor  # (B,)
    logits: torch.Tensor  # (B, N, V) (zeros where nothing fired)
    ids: list[list[int]]


def _right_aligned(valid: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) counts -> (B, size) mask of the last ``valid`` slots."""
    return torch.arange(size, device=valid.device)[None] >= size - valid[:, None]


def _push(cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Append ``new`` along the time axis (-2) and keep the last ``cache.shape[-2]`` slots."""
    size = cache.shape[-2]
    return torch.cat([cache, new], dim=-2)[..., -size:, :] if size else cache


class StreamingParaformer(nn.Module):
    """Steps of one chunk config over a streaming Paraformer's weights (``Paraformer`` with ``cfg.streaming``)."""

    def __init__(self, model: Paraformer, chunk: ChunkConfig = ChunkConfig()):
        super().__init__()
        if not model.cfg.streaming:
            raise UnsupportedConfigError("model: an offline Paraformer has no chunked encoder; use a ParaformerStreaming folder")
        self.model, self.chunk, self.cfg = model, chunk, model.cfg

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> ParaformerStreamState:
        cfg, ch = self.cfg, self.chunk
        device = device or next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        layers, dec_layers = cfg.encoder_blocks, cfg.decoder_blocks

        def z(*shape, dt=dtype):
            return torch.zeros(batch_size, *shape, dtype=dt, device=device)

        return ParaformerStreamState(
            feats=z(ch.kept, cfg.input_size), position=z(dt=torch.long),
            enc_k=z(layers, cfg.heads, ch.encoder_cache, cfg.head_dim), enc_v=z(layers, cfg.heads, ch.encoder_cache, cfg.head_dim),
            enc_valid=z(dt=torch.long), cif_alpha=z(), cif_hidden=z(cfg.d_model),
            dec_hist=z(dec_layers, cfg.decoder_kernel - 1, cfg.d_model),
            dec_k=z(dec_layers, cfg.heads, ch.decoder_cache, cfg.head_dim), dec_v=z(dec_layers, cfg.heads, ch.decoder_cache, cfg.head_dim),
            dec_valid=z(dt=torch.long),
        )

    # -- the three parts of a step --------------------------------------------------------------

    def _encode(self, feats: torch.Tensor | None, state: ParaformerStreamState) -> torch.Tensor:
        enc, ch = self.model.encoder, self.chunk
        if feats is None:  # FunASR's tail chunk: the kept frames, scaled by sqrt(d) once more
            x = state.feats * math.sqrt(self.cfg.d_model)
        else:
            new = enc.embed(feats, state.position)
            state.position.add_(feats.shape[1])
            x = torch.cat([state.feats, new], dim=1)
            state.feats.copy_(x[:, -ch.kept :])
        mask = _right_aligned(state.enc_valid, ch.encoder_cache)
        stored = max(x.shape[1] - ch.lookahead, 0)
        for i, layer in enumerate(enc.layers):
            x, k, v = layer.chunk(x, state.enc_k[:, i], state.enc_v[:, i], mask)
            state.enc_k[:, i] = _push(state.enc_k[:, i], k[:, :, :stored])
            state.enc_v[:, i] = _push(state.enc_v[:, i], v[:, :, :stored])
        state.enc_valid.add_(stored).clamp_(max=ch.encoder_cache)
        return enc.after_norm(x)

    def _fire(self, hidden: torch.Tensor, state: ParaformerStreamState, final: bool):
        ch = self.chunk
        alphas = self.model.predictor.alphas(hidden).clone()
        alphas[:, : ch.left] = 0
        if not final:
            alphas[:, ch.left + ch.stride :] = 0
        h = torch.cat([state.cif_hidden[:, None], hidden], dim=1)
        a = torch.cat([state.cif_alpha[:, None], alphas], dim=1)
        if final:
            h = torch.nn.functional.pad(h, (0, 0, 0, 1))
            a = torch.nn.functional.pad(a, (0, 1), value=self.cfg.cif_tail)
        out = integrate_and_fire(a, h)
        rest = out.residual_alpha
        state.cif_alpha.copy_(rest)
        state.cif_hidden.copy_(torch.where(rest[:, None] > 0, out.residual_frame / rest.clamp(min=1e-30)[:, None], out.residual_frame))
        return out, alphas

    def _decode(self, embeds: torch.Tensor, counts: torch.Tensor, memory: torch.Tensor, state: ParaformerStreamState) -> torch.Tensor:
        """Rows that fired at least one token; the others keep their decoder caches (as FunASR)."""
        dec, ch = self.model.decoder, self.chunk
        b, n, _ = embeds.shape
        logits = embeds.new_zeros(b, n, self.cfg.vocab_size)
        rows = torch.nonzero(counts > 0).flatten()
        if rows.numel() == 0:
            return logits
        x, mem, cnt = embeds[rows], memory[rows], counts[rows]
        hist, dk, dv = state.dec_hist[rows], state.dec_k[rows], state.dec_v[rows]
        mask = torch.cat([_right_aligned(state.dec_valid[rows], ch.decoder_cache),
                          torch.ones(rows.numel(), mem.shape[1], dtype=torch.bool, device=mem.device)], dim=1)
        keep = cnt[:, None] + torch.arange(hist.shape[2], device=cnt.device)[None]  # last k-1 of history + valid tokens
        for i, layer in enumerate(dec.decoders):
            k_new, v_new = layer.src_attn.keys_values(mem)
            keys, values = torch.cat([dk[:, i], k_new], dim=2), torch.cat([dv[:, i], v_new], dim=2)
            x, u = layer.chunk(x, hist[:, i], keys, values, mask)
            full = torch.cat([hist[:, i], u], dim=1)
            hist[:, i] = full.gather(1, keep[..., None].expand(-1, -1, full.shape[-1]))
            dk[:, i], dv[:, i] = _push(dk[:, i], k_new), _push(dv[:, i], v_new)
        state.dec_hist[rows], state.dec_k[rows], state.dec_v[rows] = hist, dk, dv
        state.dec_valid[rows] = (state.dec_valid[rows] + mem.shape[1]).clamp(max=ch.decoder_cache)
        logits[rows] = dec.head(x)
        return logits

    @torch.inference_mode()
    def step(self, feats: torch.Tensor | None, state: ParaformerStreamState, final: bool = False) -> ChunkOutput:
        """One chunk for every row: ``feats`` (B, n, input_size) new LFR frames (``stride`` of them except at the
        end), or None for FunASR's tail chunk (``final`` implied). Updates ``state`` in place."""
        final = final or feats is None
        hidden = self._encode(feats, state)
        cif, alphas = self._fire(hidden, state, final)
        logits = self._decode(cif.embeds, cif.counts, hidden, state)
        return ChunkOutput(hidden, alphas, cif.embeds, cif.counts, logits, self.model.greedy(logits, cif.counts))
