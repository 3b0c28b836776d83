"""Cached streaming layers shared by every model.

* ``conv``: causal Conv1d/Conv2d with a left-context cache; transposed Conv1d
  with an overlap tail (vocoders).
* ``attention``: multi-head attention over a fixed-capacity ring KV cache, with
  rotary or relative-position scores.

Each layer's offline ``forward`` is the reference its streaming ``step`` is
tested against, for chunk sizes 1, 2, 8 and random splits.
"""

from legato.stream.layers.attention import CachedAttention, KVCacheState, RelPositionBias, RotaryEmbedding
from legato.stream.layers.conv import CausalConv1d, CausalConv2d, CausalConvTranspose1d, ConvState, TransposedConvState

__all__ = [
    "CachedAttention",
    "CausalConv1d",
    "CausalConv2d",
    "CausalConvTranspose1d",
    "ConvState",
    "KVCacheState",
    "RelPositionBias",
    "RotaryEmbedding",
    "TransposedConvState",
]
