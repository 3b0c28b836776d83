"""Paraformer's architecture, read and checked from a FunASR ``config.yaml``.

Only what inference needs is kept; a field legato does not implement fails
loading with the field named (``UnsupportedConfigError``), never silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

LN_EPS = 1e-12  # FunASR's LayerNorm default, used everywhere in Paraformer


class UnsupportedConfigError(ValueError):
    code = "unsupported_model"


OFFLINE_MODELS = ("Paraformer", "BiCifParaformer", "SeacoParaformer")
STREAMING_MODELS = ("ParaformerStreaming",)


@dataclass(frozen=True)
class ParaformerConfig:
    vocab_size: int
    input_size: int = 560  # LFR feature dims (n_mels * lfr_m)
    d_model: int = 512
    heads: int = 4
    encoder_ff: int = 2048
    encoder_blocks: int = 50
    encoder_kernel: int = 11
    encoder_shift: int = 0  # FunASR's "sanm_shfit": the FSMN kernel moves this many frames to the past
    decoder_ff: int = 2048
    decoder_blocks: int = 16
    decoder_kernel: int = 11
    decoder_shift: int = 0
    cif_threshold: float = 1.0
    cif_tail: float = 0.45
    cif_l_order: int = 1
    cif_r_order: int = 1
    streaming: bool = False
    blank_id: int = 0
    sos_id: int = 1
    eos_id: int = 2

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @classmethod
    def from_funasr(cls, conf: Mapping[str, Any], vocab_size: int) -> "ParaformerConfig":
        model = conf.get("model")
        if model not in OFFLINE_MODELS + STREAMING_MODELS:
            raise UnsupportedConfigError(f"model: {model!r} is not a Paraformer legato serves ({', '.join(OFFLINE_MODELS[:1] + STREAMING_MODELS)})")
        streaming = model in STREAMING_MODELS
        want_encoder = "SANMEncoderChunkOpt" if streaming else "SANMEncoder"
        enc, dec, pred = (dict(conf.get(k) or {}) for k in ("encoder_conf", "decoder_conf", "predictor_conf"))
        checks = {
            "encoder": (conf.get("encoder"), (want_encoder, "SANMEncoder") if not streaming else (want_encoder,)),
            "decoder": (conf.get("decoder"), ("ParaformerSANMDecoder",)),
            "predictor": (conf.get("predictor"), ("CifPredictorV2",)),
            "encoder_conf.selfattention_layer_type": (enc.get("selfattention_layer_type", "sanm"), ("sanm",)),
            "encoder_conf.normalize_before": (enc.get("normalize_before", True), (True,)),
            "encoder_conf.input_layer": (enc.get("input_layer", "pe"), ("pe", "pe_online")),
            "predictor_conf.threshold": (float(pred.get("threshold", 1.0)), (1.0,)),  # FunASR's CIF assumes 1.0
        }
        for field, (value, allowed) in checks.items():
            if value not in allowed:
                raise UnsupportedConfigError(f"{field}: {value!r} is not supported (legato supports {', '.join(map(repr, allowed))})")
        if model == "SeacoParaformer" or model == "BiCifParaformer":
            raise UnsupportedConfigError(f"model: {model!r} (hotword/timestamp heads) is not supported yet; use a plain Paraformer")
        if pred.get("l_order", 1) != 1 or pred.get("r_order", 1) != 1:
            raise UnsupportedConfigError("predictor_conf.l_order/r_order: only 1/1 (FunASR's released models) is supported")
        if int(dec.get("att_layer_num", dec.get("num_blocks", 6))) != int(dec.get("num_blocks", 6)):
            raise UnsupportedConfigError("decoder_conf.att_layer_num must equal num_blocks (released models; no decoders2 stack)")
        d = int(enc.get("output_size", 256))
        if d % int(enc.get("attention_heads", 4)):
            raise UnsupportedConfigError("encoder_conf.output_size must be a multiple of attention_heads")
        cfg = cls(
            vocab_size=vocab_size,
            input_size=int(conf.get("input_size") or 560),
            d_model=d,
            heads=int(enc.get("attention_heads", 4)),
            encoder_ff=int(enc.get("linear_units", 2048)),
            encoder_blocks=int(enc.get("num_blocks", 6)),
            encoder_kernel=int(enc.get("kernel_size", 11)),
            encoder_shift=int(enc.get("sanm_shfit", 0)),
            decoder_ff=int(dec.get("linear_units", 2048)),
            decoder_blocks=int(dec.get("num_blocks", 6)),
            decoder_kernel=int(dec.get("kernel_size", 21)),
            decoder_shift=int(dec.get("sanm_shfit", 0)),
            cif_threshold=float(pred.get("threshold", 1.0)),
            cif_tail=float(pred.get("tail_threshold", 0.0)),
            streaming=streaming,
        )
        if int(dec.get("attention_heads", cfg.heads)) != cfg.heads:
            raise UnsupportedConfigError("decoder_conf.attention_heads must equal encoder_conf.attention_heads")
        if streaming and cfg.decoder_shift != (cfg.decoder_kernel - 1) // 2:
            raise UnsupportedConfigError(
                f"decoder_conf.sanm_shfit: {cfg.decoder_shift}: the streaming decoder needs a causal FSMN "
                f"(sanm_shfit = (kernel_size - 1) / 2 = {(cfg.decoder_kernel - 1) // 2})"
            )
        return cfg
