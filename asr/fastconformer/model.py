"""A whole cache-aware FastConformer ASR model: front-end settings, encoder, CTC and/or RNNT heads.

``kind`` is NeMo's model class: ``ctc`` (EncDecCTCModelBPE), ``rnnt``
(EncDecRNNTBPEModel) or ``hybrid`` (EncDecHybridRNNTCTCBPEModel: one encoder,
both heads; RNNT is the default decoder, as in NeMo).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from legato.asr.fastconformer.config import FastConformerConfig
from legato.asr.fastconformer.decoders import UNLIMITED_SYMBOLS, CtcGreedyDecoder, CtcHead, RnntDecoder, RnntGreedyDecoder, RnntJoint
from legato.asr.fastconformer.encoder import FastConformerEncoder
from legato.asr.frontends.nemo_mel import NemoMelConfig

KINDS = ("ctc", "rnnt", "hybrid")
DECODERS = ("rnnt", "ctc")


@dataclass(frozen=True)
class HeadConfig:
    kind: str  # "ctc", "rnnt" or "hybrid"
    vocab_size: int  # without blank; blank = vocab_size
    pred_hidden: int = 640  # RNNT prediction net
    pred_layers: int = 1
    joint_hidden: int = 640
    joint_activation: str = "relu"
    max_symbols: int = 10  # RNNT labels per frame at most (NeMo decoding.greedy.max_symbols)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def decoders(self) -> tuple[str, ...]:
        return {"ctc": ("ctc",), "rnnt": ("rnnt",), "hybrid": ("rnnt", "ctc")}[self.kind]


@dataclass(frozen=True)
class FastConformerModelConfig:
    mel: NemoMelConfig
    encoder: FastConformerConfig
    heads: HeadConfig


class FastConformerModel(nn.Module):
    """Parameter names follow NeMo: ``encoder.*``, ``decoder.*`` + ``joint.*`` (RNNT), ``decoder.*`` (CTC model)
    or ``ctc_decoder.*`` (hybrid)."""

    def __init__(self, cfg: FastConformerModelConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.heads
        d = cfg.encoder.d_model
        self.encoder = FastConformerEncoder(cfg.encoder)
        self.decoder: nn.Module | None = None
        self.joint: RnntJoint | None = None
        self.ctc_decoder: CtcHead | None = None
        if h.kind == "ctc":
            self.decoder = CtcHead(d, h.vocab_size)
        else:
            self.decoder = RnntDecoder(h.vocab_size, h.pred_hidden, h.pred_layers)
            self.joint = RnntJoint(d, h.pred_hidden, h.joint_hidden, h.vocab_size, h.joint_activation)
        if h.kind == "hybrid":
            self.ctc_decoder = CtcHead(d, h.vocab_size)

    @property
    def blank(self) -> int:
        return self.cfg.heads.vocab_size

    def ctc_head(self) -> CtcHead:
        head = self.decoder if self.cfg.heads.kind == "ctc" else self.ctc_decoder
        if not isinstance(head, CtcHead):
            raise ValueError(f"this {self.cfg.heads.kind} model has no CTC head")
        return head

    def rnnt(self) -> tuple[RnntDecoder, RnntJoint]:
        if not isinstance(self.decoder, RnntDecoder) or self.joint is None:
            raise ValueError(f"this {self.cfg.heads.kind} model has no RNNT head")
        return self.decoder, self.joint

    def check_decoder(self, decoder: str | None) -> str:
        """The decoder to use: the model's default (RNNT for hybrids) or ``decoder``, if the model has it."""
        if decoder is None:
            return self.cfg.heads.decoders[0]
        if decoder not in self.cfg.heads.decoders:
            raise ValueError(f"decoder {decoder!r} is not available in this {self.cfg.heads.kind} model (has {list(self.cfg.heads.decoders)})")
        return decoder

    @property
    def max_symbols(self) -> int:
        return self.cfg.heads.max_symbols or UNLIMITED_SYMBOLS

    def greedy_decoder(self, decoder: str | None = None) -> CtcGreedyDecoder | RnntGreedyDecoder:
        """The streaming greedy decoder over ``decoder``'s head (the model's default when None)."""
        if self.check_decoder(decoder) == "ctc":
            return CtcGreedyDecoder(self.ctc_head())
        return RnntGreedyDecoder(*self.rnnt(), self.max_symbols)

    def param_device(self) -> torch.device:
        return next(self.parameters()).device
