"""XCodec2's decoder (codes -> 16 kHz audio), loading the official ``model.safetensors`` layout, and a windowed
streaming decoder. The encoder (audio -> codes, for zero-shot prompts) is ``xcodec2_encoder.py``.

Path (tests/fixtures/xcodec2/NOTES.md): FSQ code (one codebook, 8 digits base 4) -> ``project_out`` -> ``fc_post_a``
-> VocosBackbone (conv k7, 2 ResNet blocks with GroupNorm, transformer blocks with RMSNorm and bidirectional
attention *without* positional encoding (the package's rotary is applied along heads, a no-op), 2 ResNet blocks,
LayerNorm) -> ISTFT head (Vocos's: log-magnitude clipped at exp <= 100, phase; n_fft 1280, hop 320, "same"
padding).
Exactly 320 samples per code.

Streaming: the backbone sees the whole sequence (global attention, GroupNorm statistics over all frames), so no
finite context reproduces whole-utterance decoding exactly. ``XCodec2Streamer`` decodes a window of ``left``
past codes + the new ones and emits all but the last ``right`` codes' audio; NOTES reports how far such windows
stay from whole decoding (for the tiny fixture model; the real model must be measured with its weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from legato.codecs.vocos import ISTFTHead

SAMPLE_RATE = 16000
HOP = 320  # samples per code
FSQ_LEVELS = 4
FSQ_DIGITS = 8
GN_GROUPS, NORM_EPS = 32, 1e-6
HEAD_DIM_OFFICIAL = 64  # the package hard-codes 16 heads of 64
FADE_SAMPLES = HOP  # cross-fade at each streamed seam: one code, 20 ms


class XCodec2Error(ValueError):
    code = "unsupported_model"


@dataclass(frozen=True)
class XCodec2Config:
    vq_dim: int = 2048
    hidden: int = 1024
    depth: int = 12
    heads: int = 16
    resnet_blocks: int = 2
    hop: int = HOP

    @property
    def n_fft(self) -> int:
        return 4 * self.hop


class ResnetBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GN_GROUPS, d, eps=NORM_EPS)
        self.conv1 = nn.Conv1d(d, d, 3, padding=1)
        self.norm2 = nn.GroupNorm(GN_GROUPS, d, eps=NORM_EPS)
        self.conv2 = nn.Conv1d(d, d, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class RmsNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.weight


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.c_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.att_norm, self.ffn_norm = RmsNorm(d), RmsNorm(d)
        self.att, self.mlp = SelfAttention(d, heads), Mlp(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.att(self.att_norm(x))
        return x + self.mlp(self.ffn_norm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: XCodec2Config):
        super().__init__()
        d = cfg.hidden
        self.embed = nn.Conv1d(d, d, 7, padding=3)
        self.prior_net = nn.ModuleList([ResnetBlock(d) for _ in range(cfg.resnet_blocks)])
        self.transformers = nn.ModuleList([TransformerBlock(d, cfg.heads) for _ in range(cfg.depth)])
        self.post_net = nn.ModuleList([ResnetBlock(d) for _ in range(cfg.resnet_blocks)])
        self.final_layer_norm = nn.LayerNorm(d, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        h = self.embed(x.transpose(1, 2))
        for block in self.prior_net:
            h = block(h)
        h = h.transpose(1, 2)
        for block in self.transformers:
            h = block(h)
        h = h.transpose(1, 2)
        for block in self.post_net:
            h = block(h)
        return self.final_layer_norm(h.transpose(1, 2))


class Generator(nn.Module):
    def __init__(self, cfg: XCodec2Config):
        super().__init__()
        self.quantizer = nn.Module()
        self.quantizer.project_out = nn.Linear(FSQ_DIGITS, cfg.vq_dim)
        self.backbone = Backbone(cfg)
        self.head = ISTFTHead(cfg.hidden, cfg.n_fft, cfg.hop)  # the same head as Vocos's


class XCodec2Decoder(nn.Module):
    """Module names follow the official checkpoint (``generator.*``, ``fc_post_a``); the encoder's keys are skipped."""

    def __init__(self, cfg: XCodec2Config):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.fc_post_a = nn.Linear(cfg.vq_dim, cfg.hidden)
        self.register_buffer("digit_base", FSQ_LEVELS ** torch.arange(FSQ_DIGITS), persistent=False)
        self.sample_rate = SAMPLE_RATE

    def fsq(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) codes in [0, 4^8) -> (B, T, 8) FSQ values in {-1, -0.5, 0, 0.5} (digit 0 = least significant)."""
        digits = (codes[..., None] // self.digit_base) % FSQ_LEVELS
        return (digits.float() - FSQ_LEVELS // 2) / (FSQ_LEVELS // 2)

    def features(self, codes: torch.Tensor) -> torch.Tensor:
        return self.fc_post_a(self.generator.quantizer.project_out(self.fsq(codes)))

    @torch.inference_mode()
    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) int codes -> (B, T * 320) float32 audio at 16 kHz."""
        return self.generator.head(self.generator.backbone(self.features(codes)))


def load_xcodec2_decoder(folder: str | Path, device: str | torch.device = "cpu") -> XCodec2Decoder:
    """The official folder (``config.json`` + ``model.safetensors``). Sizes come from the weights (the package
    hard-codes them); the head count is the official 64-dim heads unless the config says otherwise."""
    from safetensors.torch import load_file

    folder = Path(folder)
    conf = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if not (folder / "model.safetensors").is_file():
        raise XCodec2Error(f"{folder}: no model.safetensors (the official XCodec2 checkpoint layout)")
    state = load_file(str(folder / "model.safetensors"))
    try:
        hidden = state["generator.backbone.embed.weight"].shape[0]
        vq_dim = state["generator.quantizer.project_out.weight"].shape[0]
    except KeyError as exc:
        raise XCodec2Error(f"{folder}: not an XCodec2 checkpoint (missing {exc})") from None
    depth = len({k.split(".")[3] for k in state if k.startswith("generator.backbone.transformers.")})
    blocks = len({k.split(".")[3] for k in state if k.startswith("generator.backbone.prior_net.")})
    heads = ((conf.get("legato_fixture") or {}).get("codec_decoder") or {}).get("heads") or max(1, hidden // HEAD_DIM_OFFICIAL)
    cfg = XCodec2Config(vq_dim=vq_dim, hidden=hidden, depth=depth, heads=int(heads), resnet_blocks=blocks)
    model = XCodec2Decoder(cfg)
    mine = {k: v for k, v in state.items() if k.startswith(("generator.backbone.", "generator.head.out.", "generator.quantizer.project_out.", "fc_post_a."))}
    missing, unexpected = model.load_state_dict(mine, strict=False)
    if missing or unexpected:
        raise XCodec2Error(f"{folder}: weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval()


class XCodec2Streamer:
    """Codes in as they are generated, audio out: each push decodes ``left`` past codes + everything not yet final
    and emits the audio of all but the last ``right`` codes (their audio waits for more context); ``flush`` emits
    the rest. ``context`` (a zero-shot reference's codes) is left context only.

    Consecutive windows disagree a little where they meet (the decoder is global), so the first ``fade`` samples of
    each new piece are cross-faded (raised cosine) from what the previous window decoded for them: no step at
    the seam."""

    def __init__(self, decoder: XCodec2Decoder, left: int = 50, right: int = 8, context: list[int] | None = None,
                 fade: int = FADE_SAMPLES):
        self.decoder, self.left, self.right = decoder, left, right
        self.codes: list[int] = list(context or [])
        self.emitted = len(self.codes)  # codes whose audio is out (or is the reference's)
        self.fade = fade if right > 0 else 0
        self.ahead = torch.zeros(0)  # the previous window's audio just past what it emitted

    def _decode(self, upto: int) -> torch.Tensor:
        lo = max(0, self.emitted - self.left)
        codes = torch.tensor([self.codes[lo:]], dtype=torch.long, device=self.decoder.digit_base.device)
        audio = self.decoder(codes)[0].float().cpu()
        hop = self.decoder.cfg.hop
        start, end = (self.emitted - lo) * hop, (upto - lo) * hop
        out = audio[start:end].clone()
        n = min(self.ahead.numel(), out.numel())
        if n:
            rise = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(n) + 0.5) / n)  # 0 -> 1
            out[:n] = self.ahead[:n] * (1 - rise) + out[:n] * rise
        self.ahead = audio[end:end + self.fade]
        self.emitted = upto
        return out

    def push(self, codes: list[int]) -> torch.Tensor:
        self.codes += list(codes)
        upto = len(self.codes) - self.right
        return self._decode(upto) if upto > self.emitted else torch.zeros(0)

    def flush(self) -> torch.Tensor:
        return self._decode(len(self.codes)) if len(self.codes) > self.emitted else torch.zeros(0)


class XCodec2Codec:
    """What a Llasa voice needs from the codec: the rate, a streaming decoder, and (when loaded) the encoder for
    zero-shot reference clips."""

    def __init__(self, decoder: XCodec2Decoder, left: int = 50, right: int = 8, encoder=None):
        self.decoder, self.left, self.right, self.encoder = decoder, left, right, encoder
        self.sample_rate = decoder.sample_rate

    @property
    def can_encode(self) -> bool:
        return self.encoder is not None

    def encode(self, audio: torch.Tensor) -> list[int]:
        """(L,) float audio at 16 kHz -> L // 320 + 1 codes."""
        if self.encoder is None:
            raise XCodec2Error("this XCodec2 codec was loaded without its encoder (codec_encoder: false): no reference audio")
        return self.encoder.encode(audio)  # which checks the audio

    def streamer(self, context: list[int] | None = None) -> XCodec2Streamer:
        return XCodec2Streamer(self.decoder, self.left, self.right, context)
