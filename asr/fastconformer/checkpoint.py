"""NeMo state-dict keys -> ours, in one visible table.

Encoder keys keep NeMo's names except the two rows of ``ENCODER_KEYS``; the
conv module's batch norm (``conv.batch_norm.*`` with running statistics) is
folded into the depthwise conv. Decoder keys: ``DECODER_KEYS``.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from legato.asr.fastconformer.config import FastConformerConfig

BN_EPS = 1e-5  # torch BatchNorm1d default, which NeMo uses

# (NeMo regex, our replacement), applied to keys under "encoder." with that prefix removed.
ENCODER_KEYS: list[tuple[str, str]] = [
    (r"^layers\.(\d+)\.self_attn\.(linear_pos\.weight|pos_bias_u|pos_bias_v)$", r"layers.\1.self_attn.rel.\2"),
    (r"^layers\.(\d+)\.conv\.batch_norm\.(weight|bias)$", r"layers.\1.conv.norm.\2"),  # layer_norm models only
]

# Ignored NeMo keys: preprocessor buffers (we compute filters ourselves) and BN bookkeeping.
IGNORED = re.compile(r"(^preprocessor\.|num_batches_tracked$)")


def _rename(key: str, table: list[tuple[str, str]]) -> str:
    for pattern, repl in table:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor, bn: Mapping[str, torch.Tensor], eps: float = BN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise conv (C, 1, K) + bias (C,) followed by eval-mode BN -> one conv."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps) if "running_var" in bn else bn["weight"]
    shift = bn["bias"] - (bn["running_mean"] * scale if "running_mean" in bn else 0.0)
    return weight * scale[:, None, None], bias * scale + shift


def encoder_state_dict(nemo: Mapping[str, torch.Tensor], cfg: FastConformerConfig) -> dict[str, torch.Tensor]:
    """NeMo encoder state dict (keys without the ``encoder.`` prefix) -> FastConformerEncoder's."""
    out: dict[str, torch.Tensor] = {}
    for key, value in nemo.items():
        if IGNORED.search(key):
            continue
        if cfg.conv_norm_type != "layer_norm" and ".conv.batch_norm." in key:
            continue  # folded below
        out[_rename(key, ENCODER_KEYS)] = value.float()
    if cfg.conv_norm_type != "layer_norm":
        for i in range(cfg.n_layers):
            pre = f"layers.{i}.conv."
            bn = {k[len(pre + "batch_norm.") :]: v.float() for k, v in nemo.items() if k.startswith(pre + "batch_norm.")}
            if not bn:
                raise KeyError(f"missing encoder.{pre}batch_norm.* for conv_norm_type={cfg.conv_norm_type}")
            w, b = fold_batch_norm(out[pre + "depthwise_conv.weight"], out[pre + "depthwise_conv.bias"], bn)
            out[pre + "depthwise_conv.weight"], out[pre + "depthwise_conv.bias"] = w, b
    return out
