"""Vocos mel vocoder (ConvNeXt backbone + ISTFT head), its log-mel front-end, and an exact streaming decoder.

Official checkpoints (``charactr/vocos-mel-24khz``) are a ``config.yaml`` (``feature_extractor``,
``backbone``, ``head`` sections, each ``class_path`` + ``init_args``) and ``pytorch_model.bin`` (the
``Vocos`` state dict). legato's module names are Vocos's, so the key table is the identity for
``backbone.*`` and ``head.out.*``; the STFT window and mel filterbank buffers are recomputed and checked.

Shapes: mel (B, n_mels, T) natural-log magnitude mel; audio (B, T * hop) at ``sample_rate``.

Decoding: embed conv (k7) -> LayerNorm -> ``num_layers`` ConvNeXt blocks (depthwise k7, LayerNorm,
Linear, GELU, Linear, layer scale; residual) -> LayerNorm -> Linear to ``n_fft + 2`` ->
magnitude ``min(exp(a), 100)`` and phase ``p`` -> inverse FFT per frame, Hann window, overlap-add,
divide by the summed squared window, trim ``(n_fft - hop) / 2`` at both ends ("same" padding).

Streaming (:class:`VocosStreamer`): each k7 conv keeps its last 6 inputs and emits a frame once the 3
frames after it arrived, so a frame leaves the backbone ``3 * (num_layers + 1)`` frames late (27 for the
8-layer 24 kHz model); the ISTFT then holds back ``n_fft - hop`` samples of overlap. Audio through the end
of mel frame f is out once frame f + 27 + 1.5 arrived: 28.5 frames = 7296 samples = 304 ms at 24 kHz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from legato.stream.module import StreamingModule
from legato.stream.state import StreamState

KERNEL = 7  # every Vocos backbone conv
HALF = KERNEL // 2  # frames of right context each conv needs
LN_EPS = 1e-6
MAG_MAX = 100.0  # Vocos clips exp(log-magnitude) here
VOCOS_LOG_FLOOR = 1e-7  # vocos safe_log
F5_LOG_FLOOR = 1e-5  # F5-TTS get_vocos_mel_spectrogram clamps here instead

FEATURES = "vocos.feature_extractors.MelSpectrogramFeatures"
BACKBONE = "vocos.models.VocosBackbone"
HEAD = "vocos.heads.ISTFTHead"


class VocosError(ValueError):
    """A Vocos config or checkpoint legato cannot use."""


@dataclass(frozen=True)
class VocosConfig:
    """Defaults: charactr/vocos-mel-24khz (the vocoder of F5-TTS)."""

    sample_rate: int = 24_000
    n_mels: int = 100
    mel_n_fft: int = 1024  # front-end STFT (centred, reflect padding)
    mel_hop: int = 256
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    n_fft: int = 1024  # head ISTFT ("same" padding)
    hop: int = 256

    @classmethod
    def from_yaml(cls, path: str | Path) -> "VocosConfig":
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            raise VocosError(f"cannot read Vocos config {path}: {exc}") from exc
        sections = {name: (doc or {}).get(name) or {} for name in ("feature_extractor", "backbone", "head")}
        for name, want in (("feature_extractor", FEATURES), ("backbone", BACKBONE), ("head", HEAD)):
            got = sections[name].get("class_path")
            if got != want:
                raise VocosError(f"{path}: {name} is {got!r}; legato supports {want} (the mel Vocos)")
        fe, bb, hd = (sections[n].get("init_args", {}) for n in ("feature_extractor", "backbone", "head"))
        if bb.get("adanorm_num_embeddings"):
            raise VocosError(f"{path}: AdaLayerNorm backbones (EnCodec Vocos) are not supported")
        if hd.get("padding", "same") != "same" or fe.get("padding", "center") != "center":
            raise VocosError(f"{path}: need head padding 'same' and feature padding 'center' (as mel-24khz)")
        cfg = cls(
            sample_rate=fe.get("sample_rate", 24_000), n_mels=fe.get("n_mels", 100), mel_n_fft=fe.get("n_fft", 1024),
            mel_hop=fe.get("hop_length", 256), dim=bb["dim"], intermediate_dim=bb["intermediate_dim"],
            num_layers=bb["num_layers"], n_fft=hd["n_fft"], hop=hd["hop_length"],
        )
        if bb.get("input_channels", cfg.n_mels) != cfg.n_mels or hd["dim"] != cfg.dim:
            raise VocosError(f"{path}: backbone input_channels/head dim disagree with n_mels/dim")
        if (cfg.n_fft - cfg.hop) % 2:
            raise VocosError(f"{path}: n_fft - hop must be even for 'same' padding")
        return cfg

    @property
    def lookahead_frames(self) -> int:
        """Mel frames a frame waits for in the backbone: 3 per k7 conv (embed + one per block)."""
        return HALF * (self.num_layers + 1)

    @property
    def trim_samples(self) -> int:
        return (self.n_fft - self.hop) // 2

    @property
    def lookahead_ms(self) -> float:
        """Streaming delay from a mel frame's own samples to their release: backbone frames + the ISTFT trim."""
        return 1000.0 * (self.lookahead_frames * self.hop + self.trim_samples) / self.sample_rate


# ---------------------------------------------------------------------------------------------- front-end


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """(n_freqs, n_mels) HTK-scale triangles, unnormalised (torchaudio ``melscale_fbanks`` defaults)."""
    f_max = float(sample_rate // 2) if f_max is None else f_max
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min, m_max = (2595.0 * math.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    f_pts = 700.0 * (10.0 ** (torch.linspace(m_min, m_max, n_mels + 2) / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


class LogMel(nn.Module):
    """Waveform (B, n) -> natural-log magnitude mel (B, n_mels, n // hop + 1): centred STFT, reflect padding,
    periodic Hann, power 1. ``log_floor`` 1e-7 is Vocos's feature extractor; 1e-5 is F5-TTS's reference mel."""

    def __init__(self, sample_rate: int = 24_000, n_fft: int = 1024, hop: int = 256, n_mels: int = 100,
                 log_floor: float = VOCOS_LOG_FLOOR):
        super().__init__()
        self.n_fft, self.hop, self.log_floor = n_fft, hop, log_floor
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, self.n_fft, self.hop, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True).abs()
        mel = torch.matmul(spec.transpose(-1, -2), self.filterbank).transpose(-1, -2)
        return torch.log(torch.clamp(mel, min=self.log_floor))


# ---------------------------------------------------------------------------------------------- network


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, intermediate_dim: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, KERNEL, padding=HALF, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))  # layer scale

    def pointwise(self, h: torch.Tensor) -> torch.Tensor:
        """Depthwise-conv output (B, C, T) -> residual branch (B, C, T); per frame, so streams trivially."""
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h.transpose(1, 2)))))
        return (self.gamma * h).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(self.dwconv(x))


class Backbone(nn.Module):
    def __init__(self, cfg: VocosConfig):
        super().__init__()
        self.embed = nn.Conv1d(cfg.n_mels, cfg.dim, KERNEL, padding=HALF)
        self.norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.convnext = nn.ModuleList(ConvNeXtBlock(cfg.dim, cfg.intermediate_dim) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) -> (B, T, dim)."""
        x = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFTHead(nn.Module):
    """Linear -> log-magnitude (exp, clipped) and phase -> inverse STFT with "same" padding. XCodec2's head too."""

    def __init__(self, dim: int, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.out = nn.Linear(dim, n_fft + 2)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def frames(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> windowed time frames (B, n_fft, T) ready to overlap-add."""
        log_mag, phase = self.out(h).transpose(1, 2).chunk(2, dim=1)
        mag = torch.clip(torch.exp(log_mag), max=MAG_MAX)
        spec = mag * (torch.cos(phase) + 1j * torch.sin(phase))
        return torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * self.window[None, :, None]

    def overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, n_fft, T) -> (B, (T - 1) * hop + n_fft) summed frames, untrimmed and unnormalised."""
        t = frames.shape[-1]
        size = (t - 1) * self.hop + self.n_fft
        return F.fold(frames, (1, size), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]

    def envelope(self, positions: torch.Tensor, total_frames: int | None = None) -> torch.Tensor:
        """Sum of squared windows of frames 0 .. total_frames - 1 at untrimmed sample ``positions`` (n,)."""
        w2 = self.window.square()
        env = torch.zeros(positions.shape, dtype=w2.dtype, device=w2.device)
        for k in range(-(-self.n_fft // self.hop)):  # frames overlapping a sample
            frame = torch.div(positions, self.hop, rounding_mode="floor") - k
            offset = positions - frame * self.hop
            ok = (frame >= 0) & (offset < self.n_fft)
            if total_frames is not None:
                ok &= frame < total_frames
            env = env + torch.where(ok, w2[offset.clamp(0, self.n_fft - 1)], 0.0)
        return env

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T * hop) audio."""
        t = h.shape[1]
        y = self.overlap_add(self.frames(h))
        pad = (self.n_fft - self.hop) // 2
        positions = torch.arange(pad, y.shape[-1] - pad, device=y.device)
        return y[:, pad:-pad] / self.envelope(positions, t)


class Vocos(nn.Module):
    def __init__(self, cfg: VocosConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.head = ISTFTHead(cfg.dim, cfg.n_fft, cfg.hop)

    def features(self, audio: torch.Tensor, log_floor: float = VOCOS_LOG_FLOOR) -> torch.Tensor:
        """(B, n) audio at sample_rate -> (B, n_mels, n // hop + 1) log-mel, the vocoder's input space."""
        mel = LogMel(self.cfg.sample_rate, self.cfg.mel_n_fft, self.cfg.mel_hop, self.cfg.n_mels, log_floor)
        return mel.to(audio.device)(audio)

    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) log-mel -> (B, T * hop) audio."""
        return self.head(self.backbone(mel))

    forward = decode


def load_vocos(config_yaml: str | Path, weights: str | Path, device: str | torch.device = "cpu") -> Vocos:
    """Build from an official ``config.yaml`` and load ``pytorch_model.bin`` (or ``.safetensors``)."""
    cfg = VocosConfig.from_yaml(config_yaml)
    weights = Path(weights)
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights), device="cpu")
        else:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VocosError(f"cannot read Vocos weights {weights}: {exc}") from exc
    if not isinstance(state, dict) or not any(k.startswith("backbone.") for k in state):
        raise VocosError(f"{weights}: not a Vocos state dict (no 'backbone.*' keys)")
    model = Vocos(cfg)
    own = {k: v.float() for k, v in state.items() if k.startswith(("backbone.", "head.out."))}
    try:
        missing, unexpected = model.load_state_dict(own, strict=False)
    except RuntimeError as exc:
        raise VocosError(f"{weights}: weights do not fit {cfg}: {exc}") from exc
    rest = sorted(set(state) - set(own) - {"head.istft.window", "feature_extractor.mel_spec.spectrogram.window",
                                          "feature_extractor.mel_spec.mel_scale.fb"})
    if missing or unexpected or rest:
        raise VocosError(f"{weights}: missing {missing[:5]}, unexpected {(unexpected + rest)[:5]}")
    fb = state.get("feature_extractor.mel_spec.mel_scale.fb")
    ours = mel_filterbank(cfg.mel_n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate)
    if fb is not None and (fb.shape != ours.shape or not torch.allclose(fb.float(), ours, atol=1e-6)):
        raise VocosError(f"{weights}: its mel filterbank is not the HTK one legato computes")
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------- streaming


@dataclass(frozen=True, eq=False)
class VocosStreamState(StreamState):
    conv_context: tuple[torch.Tensor, ...]  # per k7 conv (embed, then each block): (B, C_in, 6) last inputs
    frames_in: torch.Tensor  # (B,) int64 mel frames received
    overlap: torch.Tensor  # (B, n_fft - hop) overlap-add sums not yet final


class VocosStreamer(StreamingModule):
    """Streaming decode: ``step(mel (B, n_mels, n)) -> audio (B, m)``; concatenated steps + ``flush`` equal
    :meth:`Vocos.decode` on the whole mel. Rows of a step must have received the same number of frames
    while warming up (``batch_key``); after that any rows may batch."""

    time_axis = -1

    def __init__(self, vocos: Vocos):
        super().__init__()
        self.vocos = vocos
        cfg = vocos.cfg
        self.convs = [vocos.backbone.embed] + [b.dwconv for b in vocos.backbone.convnext]
        self.lookahead_frames = cfg.lookahead_frames
        self.trim = cfg.trim_samples
        # After this many frames every step emits exactly n * hop samples.
        self.warmup_frames = self.lookahead_frames + -(-self.trim // cfg.hop) + 1

    @property
    def lookahead_ms(self) -> float:
        return self.vocos.cfg.lookahead_ms

    def init_state(self, batch_size: int, device=None) -> VocosStreamState:
        device = device or self.param_device()
        cfg = self.vocos.cfg
        return VocosStreamState(
            conv_context=tuple(torch.zeros(batch_size, c.in_channels, KERNEL - 1, device=device) for c in self.convs),
            frames_in=torch.zeros(batch_size, dtype=torch.long, device=device),
            overlap=torch.zeros(batch_size, cfg.n_fft - cfg.hop, device=device),
        )

    def batch_key(self, state: VocosStreamState, row: int):
        return min(int(state.frames_in[row]), self.warmup_frames)

    def _conv_layer(self, k: int, x: torch.Tensor, state: VocosStreamState, received: int) -> torch.Tensor:
        """Feed new inputs x (B, C, n) to conv k, which had ``received`` inputs; return the frames now complete."""
        buf = torch.cat((state.conv_context[k], x), dim=-1)
        state.conv_context[k].copy_(buf[..., -(KERNEL - 1):])
        first_centre = received - HALF  # frame position of the first window's centre
        skip = max(0, -first_centre)  # windows centred before frame 0 read the zeroed start: not frames
        if x.shape[-1] <= skip:
            return x[..., :0].new_zeros(x.shape[0], self.convs[k].out_channels, 0)
        conv = self.convs[k]
        y = F.conv1d(buf[..., skip:], conv.weight, conv.bias, groups=conv.groups)
        if k == 0:
            return self.vocos.backbone.norm(y.transpose(1, 2)).transpose(1, 2)
        block = self.vocos.backbone.convnext[k - 1]
        residual = buf[..., HALF + skip: HALF + skip + y.shape[-1]]
        return residual + block.pointwise(y)

    def _advance(self, mel: torch.Tensor, state: VocosStreamState, final: bool) -> torch.Tensor:
        cfg, head = self.vocos.cfg, self.vocos.head
        total = int(state.frames_in[0]) + (mel.shape[-1] if not final else 0)
        before = int(state.frames_in[0])
        x = mel
        for k in range(len(self.convs)):
            received = max(0, before - HALF * k)  # inputs conv k had before this call
            if final:  # the offline conv's right zero padding
                x = torch.cat((x, x.new_zeros(x.shape[0], x.shape[1], HALF)), dim=-1)
            x = self._conv_layer(k, x, state, received)
        done = max(0, before - HALF * len(self.convs))  # frames the head had already added
        if not final:
            state.frames_in.add_(mel.shape[-1])
        n_new = x.shape[-1]
        if n_new:
            h = self.vocos.backbone.final_layer_norm(x.transpose(1, 2))
            y = head.overlap_add(head.frames(h))
            y[:, : state.overlap.shape[-1]] += state.overlap
            ready, tail = y[:, : n_new * cfg.hop], y[:, n_new * cfg.hop:]
            state.overlap.copy_(tail)
        else:
            ready, tail = state.overlap[:, :0], state.overlap
        start = done * cfg.hop  # untrimmed position of ready[:, 0]
        if final:  # the tail is final too, up to the trimmed end
            ready = torch.cat((ready, tail), dim=-1)
            end = (total - 1) * cfg.hop + cfg.n_fft - self.trim
            ready = ready[:, : max(0, end - start)]
        positions = torch.arange(start, start + ready.shape[-1], device=ready.device)
        keep = positions >= self.trim
        out = ready[:, keep] / head.envelope(positions[keep], total if final else None)
        return out

    @torch.no_grad()
    def step(self, mel: torch.Tensor, state: VocosStreamState) -> torch.Tensor:
        """mel (B, n_mels, n) -> (B, m) audio now final (m = n * hop once warmed up)."""
        return self._advance(mel, state, final=False)

    @torch.no_grad()
    def flush(self, state: VocosStreamState) -> torch.Tensor:
        """The last ``lookahead`` frames' audio and the ISTFT tail."""
        b, c = state.frames_in.shape[0], self.vocos.cfg.n_mels
        empty = state.overlap.new_zeros(b, c, 0)
        return self._advance(empty, state, final=True)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.vocos.decode(mel)
