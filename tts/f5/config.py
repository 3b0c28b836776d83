"""F5-TTS network and mel shape: one frozen dataclass, defaults = the official F5TTS_v1_Base.

Fields mirror ``model.arch`` and ``model.mel_spec`` of F5-TTS's Hydra yaml
(``src/f5_tts/configs/F5TTS_v1_Base.yaml``); :meth:`F5Config.from_yaml` reads one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

SAMPLE_RATE = 24_000  # Hz, every official F5-TTS checkpoint
HOP_SAMPLES = 256  # mel hop: 24000 / 256 = 93.75 frames/s, 10.67 ms per frame
N_MELS = 100
TIME_FREQ_DIM = 256  # sinusoidal timestep features before the time MLP (fixed in F5-TTS)
CONV_POS_KERNEL = 31  # ConvPositionEmbedding kernel and groups (fixed in F5-TTS)
CONV_POS_GROUPS = 16
TEXT_CONV_MULT = 2  # ConvNeXt V2 text blocks: hidden = 2 * text_dim (fixed in F5-TTS)


@dataclass(frozen=True)
class F5Config:
    dim: int = 1024  # DiT width
    depth: int = 22  # DiT blocks
    heads: int = 16
    dim_head: int = 64  # heads * dim_head is the attention width (== dim in every official model)
    ff_mult: float = 2  # feed-forward hidden = dim * ff_mult
    text_dim: int = 512  # character embedding width
    text_num_embeds: int = 2545  # vocabulary size (vocab.txt lines); the table has one more row, 0 = filler
    conv_layers: int = 4  # ConvNeXt V2 blocks over the text embedding
    text_mask_padding: bool = True  # v1: zero filler/padding text positions between text blocks; v0 Base: False
    pe_attn_head: int | None = None  # rotary on the first n heads only (v0 Base: 1); None = all heads
    qk_norm: str | None = None  # None | "rms_norm" (per-head RMSNorm of q and k, eps 1e-6)
    long_skip_connection: bool = False
    mel_dim: int = N_MELS
    sample_rate: int = SAMPLE_RATE
    hop_length: int = HOP_SAMPLES
    win_length: int = 1024
    n_fft: int = 1024
    mel_spec_type: str = "vocos"  # the only mel front-end legato implements ("bigvgan" is the other)

    def __post_init__(self) -> None:
        if self.qk_norm not in (None, "rms_norm"):
            raise ValueError(f"qk_norm must be None or 'rms_norm', got {self.qk_norm!r}")
        if self.mel_spec_type != "vocos":
            raise ValueError(f"only the 'vocos' mel front-end is supported, got {self.mel_spec_type!r}")
        if self.pe_attn_head is not None and not 0 < self.pe_attn_head <= self.heads:
            raise ValueError(f"pe_attn_head must lie in [1, {self.heads}], got {self.pe_attn_head}")

    @property
    def ff_dim(self) -> int:
        return int(self.dim * self.ff_mult)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "F5Config":
        """Read ``model.arch`` and ``model.mel_spec`` of an F5-TTS training yaml; training-only keys are ignored."""
        import yaml

        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        model = (doc or {}).get("model", {})
        if "arch" not in model:
            raise ValueError(f"{path}: no model.arch section (not an F5-TTS config)")
        if model.get("backbone", "DiT") != "DiT":
            raise ValueError(f"{path}: backbone {model['backbone']!r} is not DiT")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in model["arch"].items() if k in names}
        mel = model.get("mel_spec", {})
        renames = {"target_sample_rate": "sample_rate", "n_mel_channels": "mel_dim"}
        values.update({renames.get(k, k): v for k, v in mel.items() if renames.get(k, k) in names})
        return cls(**{**values, **overrides})

    def with_(self, **changes) -> "F5Config":
        return replace(self, **changes)
