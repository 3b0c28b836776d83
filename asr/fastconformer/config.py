"""FastConformer encoder settings, read from (and checked against) a NeMo ``encoder`` config.

Only the cache-aware streaming family is supported: ``dw_striding`` causal
subsampling, relative-position attention with ``chunked_limited`` context,
causal depthwise convolution. Anything else fails with
:class:`UnsupportedConfigError` naming the field, rather than loading a model
that would compute something different from NeMo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

CONV_NORMS = ("batch_norm", "layer_norm", "fused_batch_norm")
SUBSAMPLING_KERNEL = 3  # dw_striding convs are 3x3 with stride 2
SUBSAMPLING_STRIDE = 2


class UnsupportedConfigError(ValueError):
    """A NeMo config value legato does not implement (the message names the field)."""

    code = "unsupported_model"


@dataclass(frozen=True)
class Lookahead:
    """One ``att_context_size`` entry: ``left`` frames of attention history, ``right`` frames of lookahead.

    Frames are encoder frames (10 ms mel hop x ``subsampling_factor``). A
    streaming step consumes one attention chunk of ``right + 1`` frames.
    """

    left: int
    right: int

    @property
    def chunk_frames(self) -> int:
        return self.right + 1

    @property
    def left_chunks(self) -> int:
        return self.left // self.chunk_frames


@dataclass(frozen=True)
class FastConformerConfig:
    feat_in: int = 80  # mel bins
    n_layers: int = 17
    d_model: int = 512
    n_heads: int = 8
    subsampling_factor: int = 8  # 2 ** number of stride-2 convs
    subsampling_conv_channels: int = 256
    ff_expansion_factor: int = 4
    conv_kernel_size: int = 9
    conv_norm_type: str = "layer_norm"
    xscaling: bool = True  # multiply subsampled features by sqrt(d_model)
    lookaheads: tuple[Lookahead, ...] = (Lookahead(70, 13), Lookahead(70, 6), Lookahead(70, 1), Lookahead(70, 0))

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise UnsupportedConfigError(f"encoder.d_model ({self.d_model}) must be a multiple of encoder.n_heads ({self.n_heads})")
        stages = math.log2(self.subsampling_factor)
        if self.subsampling_factor < 2 or stages != int(stages):
            raise UnsupportedConfigError(f"encoder.subsampling_factor must be a power of two >= 2, got {self.subsampling_factor}")
        if self.conv_norm_type not in CONV_NORMS:
            raise UnsupportedConfigError(f"encoder.conv_norm_type {self.conv_norm_type!r} is not supported (use one of {CONV_NORMS})")
        if not self.lookaheads:
            raise UnsupportedConfigError("encoder.att_context_size is empty")
        for la in self.lookaheads:
            if la.right < 0 or la.left <= 0:
                raise UnsupportedConfigError(f"encoder.att_context_size {[la.left, la.right]}: streaming needs a positive left and a non-negative right context")
            if la.left % la.chunk_frames:
                raise UnsupportedConfigError(
                    f"encoder.att_context_size {[la.left, la.right]}: left context must be a multiple of right context + 1"
                )

    @property
    def subsampling_stages(self) -> int:
        return int(math.log2(self.subsampling_factor))

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def max_left(self) -> int:
        """Attention cache capacity: the longest left context of any lookahead."""
        return max(la.left for la in self.lookaheads)

    def lookahead(self, index: int) -> Lookahead:
        if not 0 <= index < len(self.lookaheads):
            raise ValueError(f"lookahead index {index} out of range: this model has {len(self.lookaheads)} ({self.describe_lookaheads()})")
        return self.lookaheads[index]

    def describe_lookaheads(self) -> str:
        return ", ".join(f"{i}: [{la.left},{la.right}]" for i, la in enumerate(self.lookaheads))

    def first_chunk_mel(self, la: Lookahead) -> int:
        """Mel frames of a stream's first step: ``1 + factor * right`` (NeMo's ``chunk_size[0]``)."""
        return 1 + self.subsampling_factor * la.right

    def chunk_mel(self, la: Lookahead) -> int:
        """Mel frames of every later step: ``factor * (right + 1)`` (NeMo's ``chunk_size[1]``)."""
        return self.subsampling_factor * la.chunk_frames

    @classmethod
    def from_nemo(cls, enc: Mapping[str, Any]) -> "FastConformerConfig":
        """Build from a NeMo ``model_config.yaml`` ``encoder`` section, refusing what we do not implement."""

        def need(field: str, ok, default=None) -> Any:
            value = enc.get(field, default)
            if not ok(value):
                raise UnsupportedConfigError(f"encoder.{field} = {value!r} is not supported by legato's cache-aware FastConformer")
            return value

        target = str(enc.get("_target_", ""))
        if target and not target.endswith("ConformerEncoder"):
            raise UnsupportedConfigError(f"encoder._target_ = {target!r}: only ConformerEncoder (FastConformer) is supported")
        need("subsampling", lambda v: v == "dw_striding")
        need("causal_downsampling", lambda v: v is True, False)
        need("self_attention_model", lambda v: v == "rel_pos", "rel_pos")
        need("att_context_style", lambda v: v == "chunked_limited", "regular")
        need("untie_biases", lambda v: v is True, True)
        need("use_bias", lambda v: v is True, True)
        need("feat_out", lambda v: v in (-1, None), -1)
        need("reduction", lambda v: v is None, None)
        need("global_tokens", lambda v: v in (0, None), 0)
        kernel = int(enc.get("conv_kernel_size", 31))
        need("conv_context_size", lambda v: v == "causal" or list(v or []) == [kernel - 1, 0], None)
        contexts = enc.get("att_context_size")
        if contexts is None:
            raise UnsupportedConfigError("encoder.att_context_size is missing: not a cache-aware streaming model")
        contexts = [list(c) for c in contexts] if isinstance(contexts[0], (list, tuple)) else [list(contexts)]
        return cls(
            feat_in=int(enc["feat_in"]),
            n_layers=int(enc["n_layers"]),
            d_model=int(enc["d_model"]),
            n_heads=int(enc.get("n_heads", 4)),
            subsampling_factor=int(enc.get("subsampling_factor", 4)),
            subsampling_conv_channels=int(need("subsampling_conv_channels", lambda v: v is not None and int(v) > 0)),
            ff_expansion_factor=int(enc.get("ff_expansion_factor", 4)),
            conv_kernel_size=kernel,
            conv_norm_type=str(enc.get("conv_norm_type", "batch_norm")),
            xscaling=bool(enc.get("xscaling", True)),
            lookaheads=tuple(Lookahead(int(c[0]), int(c[1])) for c in contexts),
        )
