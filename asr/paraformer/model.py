"""Offline Paraformer: features -> SANM encoder -> CIF tokens -> SANM decoder -> greedy ids, batched."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from legato.asr.paraformer.cif import CifPredictor
from legato.asr.paraformer.config import ParaformerConfig
from legato.asr.paraformer.decoder import SanmDecoder
from legato.asr.paraformer.sanm import SanmEncoder


@dataclass(frozen=True)
class ParaformerOutput:
    encoder: torch.Tensor  # (B, T, d)
    alphas: torch.Tensor  # (B, T + 1) with the tail weight at each row's end
    embeds: torch.Tensor  # (B, N, d) fired token embeddings
    counts: torch.Tensor  # (B,)
    logits: torch.Tensor  # (B, N, V)
    ids: list[list[int]]  # greedy ids per row, blank/sos/eos removed


class Paraformer(nn.Module):
    """Module names follow FunASR's keys (``encoder.*``, ``predictor.*``, ``decoder.*``)."""

    def __init__(self, cfg: ParaformerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SanmEncoder(cfg)
        self.predictor = CifPredictor(cfg)
        self.decoder = SanmDecoder(cfg)

    def greedy(self, logits: torch.Tensor, counts: torch.Tensor) -> list[list[int]]:
        drop = {self.cfg.blank_id, self.cfg.sos_id, self.cfg.eos_id}
        best = logits.argmax(-1).tolist()
        return [[i for i in row[:n] if i not in drop] for row, n in zip(best, counts.tolist())]

    @torch.inference_mode()
    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> ParaformerOutput:
        """LFR + CMVN features (B, T, input_size) and their lengths -> every row as if decoded alone."""
        enc = self.encoder(feats, lengths)
        cif, alphas = self.predictor(enc, lengths)
        if not cif.counts.numel() or int(cif.counts.max()) == 0:
            logits = enc.new_zeros(enc.shape[0], 0, self.cfg.vocab_size)
        else:
            logits = self.decoder(cif.embeds, cif.counts, enc, lengths)
        return ParaformerOutput(enc, alphas, cif.embeds, cif.counts, logits, self.greedy(logits, cif.counts))
