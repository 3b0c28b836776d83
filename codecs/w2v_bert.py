"""Wav2Vec2-BERT 2.0's conformer encoder (the semantic half of XCodec2's encoder), Hugging Face key names.

Inputs are 160-dim stacked fbank features (``xcodec2_features.py``). ``feature_projection`` (LayerNorm + Linear)
then conformer layers, each::

    x = x + FFN1(LN(x)) / 2
    x = x + MHSA(LN(x))        # "relative_key": q.k + q.E[clamp(j - i, -64, 8) + 64], both / sqrt(d); no mask
    x = x + Conv(x)            # LN, pointwise (GLU), causal depthwise k31, LN over channels, swish, pointwise
    x = x + FFN2(LN(x)) / 2
    x = LN(x)

XCodec2 reads ``hidden_states[16]``, the 16th layer's output, so only the first 16 layers are built (the release
has 24; the rest are computed and discarded by the package). Sizes come from the weights: heads = hidden /
``distance_embedding`` width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

LN_EPS = 1e-5
LEFT_POSITIONS, RIGHT_POSITIONS = 64, 8  # w2v-bert-2.0's relative distance clamp
FF_SCALE = 0.5


@dataclass(frozen=True)
class W2vBertConfig:
    hidden: int = 1024
    heads: int = 16
    ffn: int = 4096
    layers: int = 16
    conv_kernel: int = 31
    features: int = 160


class FeedForward(nn.Module):
    def __init__(self, cfg: W2vBertConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden, cfg.ffn)
        self.output_dense = nn.Linear(cfg.ffn, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.silu(self.intermediate_dense(x)))


class RelativeKeyAttention(nn.Module):
    def __init__(self, cfg: W2vBertConfig):
        super().__init__()
        self.heads, self.d = cfg.heads, cfg.hidden // cfg.heads
        self.linear_q, self.linear_k = nn.Linear(cfg.hidden, cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden)
        self.linear_v, self.linear_out = nn.Linear(cfg.hidden, cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden)
        self.distance_embedding = nn.Embedding(LEFT_POSITIONS + RIGHT_POSITIONS + 1, self.d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, t, self.heads, self.d).transpose(1, 2) for lin in (self.linear_q, self.linear_k, self.linear_v))
        pos = torch.arange(t, device=x.device)
        distance = (pos[None, :] - pos[:, None]).clamp(-LEFT_POSITIONS, RIGHT_POSITIONS) + LEFT_POSITIONS  # key j - query i
        # q . E[distance] as a gather from q . E for the 73 distances: (B, H, T, 73), not a (T, T, d) table
        by_distance = q @ self.distance_embedding.weight.to(q.dtype).t()
        relative = by_distance.gather(-1, distance.expand(b, self.heads, t, t))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=relative / self.d ** 0.5)  # both terms / sqrt(d)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, -1))


class ConvModule(nn.Module):
    def __init__(self, cfg: W2vBertConfig):
        super().__init__()
        h = cfg.hidden
        self.layer_norm = nn.LayerNorm(h, eps=LN_EPS)
        self.pointwise_conv1 = nn.Conv1d(h, 2 * h, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(h, h, cfg.conv_kernel, groups=h, bias=False)
        self.depthwise_layer_norm = nn.LayerNorm(h, eps=LN_EPS)
        self.pointwise_conv2 = nn.Conv1d(h, h, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)), dim=1)
        h = self.depthwise_conv(F.pad(h, (self.depthwise_conv.kernel_size[0] - 1, 0)))  # causal
        h = F.silu(self.depthwise_layer_norm(h.transpose(1, 2)).transpose(1, 2))
        return self.pointwise_conv2(h).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, cfg: W2vBertConfig):
        super().__init__()
        h = cfg.hidden
        self.ffn1_layer_norm, self.ffn1 = nn.LayerNorm(h, eps=LN_EPS), FeedForward(cfg)
        self.self_attn_layer_norm, self.self_attn = nn.LayerNorm(h, eps=LN_EPS), RelativeKeyAttention(cfg)
        self.conv_module = ConvModule(cfg)
        self.ffn2_layer_norm, self.ffn2 = nn.LayerNorm(h, eps=LN_EPS), FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(h, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + FF_SCALE * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        x = x + self.conv_module(x)
        x = x + FF_SCALE * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


class FeatureProjection(nn.Module):
    def __init__(self, cfg: W2vBertConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.features, eps=LN_EPS)
        self.projection = nn.Linear(cfg.features, cfg.hidden)


class Encoder(nn.Module):
    def __init__(self, cfg: W2vBertConfig):
        super().__init__()
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.layers))


class W2vBert(nn.Module):
    """(B, T, 160) features -> (B, T, hidden): the output of layer ``cfg.layers`` (``hidden_states[cfg.layers]``)."""

    def __init__(self, cfg: W2vBertConfig):
        super().__init__()
        self.cfg = cfg
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        fp = self.feature_projection
        x = fp.projection(fp.layer_norm(features))
        for layer in self.encoder.layers:
            x = layer(x)
        return x
