"""XCodec2's encoder (16 kHz audio -> codes, 50 per second) for zero-shot Llasa prompts, official key names.

Path (tests/fixtures/xcodec2/NOTES.md, "Encoder path"): pad the audio right to the next multiple of 320 plus
up to 320 (T = L // 320 + 1 codes). Semantic half: w2v-BERT features of the padded audio (``xcodec2_features``)
-> ``W2vBert`` layer 16 -> ``SemanticEncoder_module`` (convs; its residual is the ReLU'd input, a quirk of an
in-place ReLU). Acoustic half: ``CodecEnc`` (weight-normed convs and anti-aliased SnakeBeta blocks, strides 2, 2,
4, 4, 5). Both concatenated -> ``fc_prior`` -> FSQ ``project_in`` -> bound (applied twice, as the package does)
-> round half to even -> code = sum_j (q_j + 2) 4^j.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from legato.codecs.alias_free import Activation1d
from legato.codecs.hifigan import fold_weight_norm
from legato.codecs.w2v_bert import W2vBert, W2vBertConfig
from legato.codecs.xcodec2 import XCodec2Error
from legato.codecs.xcodec2_features import semantic_features

HOP = 320
STRIDES = (2, 2, 4, 4, 5)
DILATIONS = (1, 3, 9)
SEMANTIC_LAYER = 16  # XCodec2 reads hidden_states[16]
FSQ_LEVELS, FSQ_DIGITS = 4, 8
FSQ_HALF = (FSQ_LEVELS - 1) * (1 + 1e-3) / 2  # 1.5015
FSQ_OFFSET = 0.5  # even number of levels
MIN_SAMPLES = HOP  # 20 ms: a shorter clip would be mostly padding (the package takes even 1 sample)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(Activation1d(dim), nn.Conv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation),
                                   Activation1d(dim), nn.Conv1d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, stride: int):
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(*(ResidualUnit(half, d) for d in DILATIONS), Activation1d(half),
                                   nn.Conv1d(half, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class CodecEnc(nn.Module):
    """(B, 1, 320 T) -> (B, T, hidden)."""

    def __init__(self, ngf: int, hidden: int):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv1d(1, ngf, 7, padding=3)]
        dim = ngf
        for stride in STRIDES:
            dim *= 2
            blocks.append(EncoderBlock(dim, stride))
        self.conv_blocks = nn.Sequential(*blocks)
        self.conv_final_block = nn.Sequential(Activation1d(dim), nn.Conv1d(dim, hidden, 3, padding=1))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.conv_final_block(self.conv_blocks(wav)).transpose(1, 2)


class SemanticEncoder(nn.Module):
    """Keys as ``SemanticEncoder_module``: (B, T, C) -> (B, T, C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.initial_conv = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.residual_blocks = nn.Sequential(nn.ReLU(), nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
                                             nn.Conv1d(channels, channels, 3, padding=1))
        self.final_conv = nn.Conv1d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.initial_conv(x.transpose(1, 2)))  # the package's in-place ReLU makes the residual relu(h)
        return self.final_conv(h + self.residual_blocks(h)).transpose(1, 2)


class Quantizer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.project_in = nn.Linear(dim, FSQ_DIGITS)


class Generator(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.quantizer = Quantizer(dim)


def bound(z: torch.Tensor) -> torch.Tensor:
    return torch.tanh(z + math.atanh(FSQ_OFFSET / FSQ_HALF)) * FSQ_HALF - FSQ_OFFSET


class XCodec2Encoder(nn.Module):
    def __init__(self, semantic: W2vBertConfig, ngf: int, acoustic: int):
        super().__init__()
        self.semantic_model = W2vBert(semantic)
        self.SemanticEncoder_module = SemanticEncoder(semantic.hidden)
        self.CodecEnc = CodecEnc(ngf, acoustic)
        dim = semantic.hidden + acoustic
        self.fc_prior = nn.Linear(dim, dim)
        self.generator = Generator(dim)
        self.register_buffer("digit_base", FSQ_LEVELS ** torch.arange(FSQ_DIGITS), persistent=False)

    def padded(self, audio: torch.Tensor) -> torch.Tensor:
        """(L,) -> (320 T,): T = L // 320 + 1 (a multiple of 320 still gets 320 samples of padding, as the package)."""
        return F.pad(audio, (0, HOP - audio.shape[-1] % HOP))

    @torch.inference_mode()
    def stages(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate, batch-free and time-major (for tests): features, semantic, acoustic, fc_prior, fsq_in."""
        wav = self.padded(audio.float())
        out = {"features": semantic_features(wav)}
        out["semantic_hidden"] = self.semantic_model(out["features"][None])[0]
        out["semantic"] = self.SemanticEncoder_module(out["semantic_hidden"][None])[0]
        out["acoustic"] = self.CodecEnc(wav[None, None])[0]
        out["fc_prior"] = self.fc_prior(torch.cat([out["semantic"], out["acoustic"]], dim=-1))
        out["fsq_in"] = self.generator.quantizer.project_in(out["fc_prior"])
        q = torch.round(bound(bound(out["fsq_in"])))  # in {-2, -1, 0, 1}
        out["codes"] = ((q + FSQ_LEVELS // 2).long() * self.digit_base).sum(-1)
        return out

    def encode(self, audio: torch.Tensor) -> list[int]:
        """(L,) float audio at 16 kHz, L >= 320 -> L // 320 + 1 codes; XCodec2Error for anything else."""
        if not isinstance(audio, torch.Tensor) or audio.dim() != 1:
            raise XCodec2Error(f"reference audio must be mono samples (L,), got shape {tuple(getattr(audio, 'shape', ()))}")
        if not audio.is_floating_point():
            raise XCodec2Error(f"reference audio must be float samples (full scale 1.0), got {audio.dtype}")
        if audio.numel() < MIN_SAMPLES:
            raise XCodec2Error(f"reference audio is too short: {audio.numel()} samples, need at least {MIN_SAMPLES} (20 ms)")
        if not bool(torch.isfinite(audio).all()):
            raise XCodec2Error("reference audio contains NaN or infinite samples")
        return self.stages(audio.to(self.digit_base.device))["codes"].tolist()


def encoder_from_state(state: dict) -> XCodec2Encoder:
    """Sizes from the weights; only the first 16 w2v-BERT layers are kept."""
    hidden = state["semantic_model.feature_projection.projection.weight"].shape[0]
    head_dim = state["semantic_model.encoder.layers.0.self_attn.distance_embedding.weight"].shape[1]
    semantic = W2vBertConfig(hidden=hidden, heads=hidden // head_dim, layers=SEMANTIC_LAYER,
                             ffn=state["semantic_model.encoder.layers.0.ffn1.intermediate_dense.weight"].shape[0],
                             conv_kernel=state["semantic_model.encoder.layers.0.conv_module.depthwise_conv.weight"].shape[-1],
                             features=state["semantic_model.feature_projection.projection.weight"].shape[1])
    ngf = state["CodecEnc.conv_blocks.0.parametrizations.weight.original1"].shape[0]
    acoustic = state["CodecEnc.conv_final_block.1.parametrizations.weight.original1"].shape[0]
    model = XCodec2Encoder(semantic, ngf, acoustic)
    keep = {k: v for k, v in state.items()
            if k.startswith(("SemanticEncoder_module.", "fc_prior.", "generator.quantizer.project_in.", "semantic_model.feature_projection."))
            or (k.startswith("semantic_model.encoder.layers.") and int(k.split(".")[3]) < SEMANTIC_LAYER)}
    acoustic_state = {k[len("CodecEnc."):]: v for k, v in state.items() if k.startswith("CodecEnc.")}
    keep.update({"CodecEnc." + k: v for k, v in fold_weight_norm(acoustic_state).items()})
    missing, unexpected = model.load_state_dict(keep, strict=False)
    if missing or unexpected:
        raise KeyError(f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def load_xcodec2_encoder(folder: str | Path, device: str | torch.device = "cpu") -> XCodec2Encoder:
    """The official folder's ``model.safetensors`` (the whole model; the decoder's keys are skipped): sizes from the
    weights, so the release and the tiny test fixture both load. Float32 on ``device``."""
    from safetensors.torch import load_file

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise XCodec2Error(f"{folder}: no model.safetensors (the official XCodec2 checkpoint layout)")
    state = load_file(str(path))
    try:
        return encoder_from_state(state).to(device)
    except KeyError as exc:
        raise XCodec2Error(f"{folder}: no XCodec2 encoder weights in this checkpoint ({exc.args[0]})") from None
