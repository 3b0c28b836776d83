"""FastSpeech 2 as ming024/FastSpeech2 computes it at inference: phoneme ids -> log-mel frames.

encoder (FFT blocks) -> [+ speaker] -> variance adaptor (duration, pitch, energy) -> length
regulator -> decoder (FFT blocks) -> mel linear -> postnet (+ residual). Non-autoregressive:
one call gives the whole utterance; the vocoder streams it (legato.codecs.hifigan).

Padding follows ming024 op for op, so batched output equals ming024's batched output (which
is not quite each utterance alone: padded positions are zeroed inside the FFT blocks but
pitch/energy embeddings, speaker embeddings and the mel linear bias reach them, and the
predictor and postnet convs read a few of them at the edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from legato.tts.fastspeech2.config import FastSpeech2Config
from legato.tts.fastspeech2.symbols import PAD_ID
from torch import nn


def sinusoid_table(n_position: int, d: int) -> torch.Tensor:
    """(n_position, d) float32: sin on even dims, cos on odd, angle pos / 10000^(2*(i//2)/d).

    Computed in float64 and rounded once, as ming024 does with NumPy.
    """
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    i = torch.arange(d, dtype=torch.float64)
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(i, 2, rounding_mode="floor") / d)
    table = torch.where(i.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def lengths_to_padding(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True at padded positions (ming024's get_mask_from_lengths)."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class SelfAttention(nn.Module):
    """Post-norm multi-head self-attention: norm(x + out(attn(x)))."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), padding (B, T) True at pads (masked as keys only) -> (B, T, d)."""
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = (proj(x).view(b, t, h, d // h).transpose(1, 2) for proj in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.norm(self.out(y) + x)


class ConvFeedForward(nn.Module):
    """norm(x + conv2(relu(conv1(x)))), convs over time with 'same' padding."""

    def __init__(self, d_model: int, d_inner: int, kernels: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(d_model, d_inner, kernels[0], padding=(kernels[0] - 1) // 2)
        self.conv2 = nn.Conv1d(d_inner, d_model, kernels[1], padding=(kernels[1] - 1) // 2)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d)."""
        y = self.conv2(F.relu(self.conv1(x.transpose(1, 2)))).transpose(1, 2)
        return self.norm(y + x)


class FFTBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_inner: int, kernels: tuple[int, int]) -> None:
        super().__init__()
        self.attn = SelfAttention(d_model, n_heads)
        self.ffn = ConvFeedForward(d_model, d_inner, kernels)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d), zero at padded positions."""
        pad = padding[..., None]
        x = self.attn(x, padding).masked_fill(pad, 0.0)
        return self.ffn(x).masked_fill(pad, 0.0)


class FFTStack(nn.Module):
    """Sinusoid positions + FFT blocks (ming024's Encoder without its embedding, and Decoder)."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_inner: int, kernels: tuple[int, int], max_seq_len: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([FFTBlock(d_model, n_heads, d_inner, kernels) for _ in range(n_layers)])
        # ming024 stores max_seq_len + 1 rows and computes a longer table when needed; same values.
        self.register_buffer("positions", sinusoid_table(max_seq_len + 1, d_model), persistent=False)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), padding (B, T) -> (B, T, d)."""
        t = x.shape[1]
        pos = self.positions if t <= self.positions.shape[0] else sinusoid_table(t, x.shape[2]).to(x.device)
        x = x + pos[:t]
        for layer in self.layers:
            x = layer(x, padding)
        return x


class VariancePredictor(nn.Module):
    """Two convs (relu, layer norm) and a projection: one value per position (log duration, pitch or energy)."""

    def __init__(self, d_model: int, filters: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(d_model, filters, kernel, padding=(kernel - 1) // 2)
        self.norm1 = nn.LayerNorm(filters)
        self.conv2 = nn.Conv1d(filters, filters, kernel, padding=1)  # ming024 hard-codes 1
        self.norm2 = nn.LayerNorm(filters)
        self.proj = nn.Linear(filters, 1)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> (B, T), zero at padded positions."""
        y = self.norm1(F.relu(self.conv1(x.transpose(1, 2))).transpose(1, 2))
        y = self.norm2(F.relu(self.conv2(y.transpose(1, 2))).transpose(1, 2))
        return self.proj(y).squeeze(-1).masked_fill(padding, 0.0)


def quantization_bins(quantization: str, lo: float, hi: float, n_bins: int) -> torch.Tensor:
    """(n_bins - 1,) bucket boundaries between stats min and max: linear, or log-uniform."""
    if quantization == "log":
        # torch.linspace(np.log(lo), ...) in ming024: the float64 logs become float32 endpoints.
        return torch.exp(torch.linspace(math.log(lo), math.log(hi), n_bins - 1))
    return torch.linspace(lo, hi, n_bins - 1)


class VarianceAdaptor(nn.Module):
    def __init__(self, cfg: FastSpeech2Config) -> None:
        super().__init__()
        d, f, k = cfg.encoder_hidden, cfg.variance_filter_size, cfg.variance_kernel_size
        self.cfg = cfg
        self.duration_predictor = VariancePredictor(d, f, k)
        self.pitch_predictor = VariancePredictor(d, f, k)
        self.energy_predictor = VariancePredictor(d, f, k)
        self.register_buffer("pitch_bins", quantization_bins(cfg.pitch_quantization, *cfg.pitch_range, cfg.n_bins))
        self.register_buffer("energy_bins", quantization_bins(cfg.energy_quantization, *cfg.energy_range, cfg.n_bins))
        self.pitch_embedding = nn.Embedding(cfg.n_bins, d)
        self.energy_embedding = nn.Embedding(cfg.n_bins, d)

    def add_pitch(self, x: torch.Tensor, padding: torch.Tensor, control: float) -> tuple[torch.Tensor, torch.Tensor]:
        """x + embedding of the bucket of (prediction * control); returns (x, scaled prediction)."""
        pred = self.pitch_predictor(x, padding) * control
        return x + self.pitch_embedding(torch.bucketize(pred, self.pitch_bins)), pred

    def add_energy(self, x: torch.Tensor, padding: torch.Tensor, control: float) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.energy_predictor(x, padding) * control
        return x + self.energy_embedding(torch.bucketize(pred, self.energy_bins)), pred


def regulate_length(x: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat each position ``frames`` times: x (B, T, d), frames (B, T) long >= 0 -> ((B, F, d), (B,) lengths).

    Rows shorter than F = max length are zero-padded, as ming024's LengthRegulator pads them.
    """
    lengths = frames.sum(1)
    n_out = int(lengths.max()) if lengths.numel() else 0
    ends = frames.cumsum(1)  # (B, T) exclusive end frame of each position
    t = torch.arange(n_out, device=x.device).expand(x.shape[0], n_out).contiguous()
    src = torch.searchsorted(ends, t, right=True).clamp(max=x.shape[1] - 1)  # position covering frame t
    out = torch.gather(x, 1, src[..., None].expand(-1, -1, x.shape[2]))
    return out.masked_fill(lengths_to_padding(lengths, n_out)[..., None], 0.0), lengths


class PostNet(nn.Module):
    """Convs with batch norm (tanh between) predicting a residual for the mel."""

    def __init__(self, n_mels: int, channels: int, kernel: int, n_layers: int) -> None:
        super().__init__()
        dims = [n_mels] + [channels] * (n_layers - 1) + [n_mels]
        self.convs = nn.ModuleList([nn.Conv1d(dims[i], dims[i + 1], kernel, padding=(kernel - 1) // 2) for i in range(n_layers)])
        self.norms = nn.ModuleList([nn.BatchNorm1d(dims[i + 1]) for i in range(n_layers)])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, F, n_mels) -> residual (B, F, n_mels)."""
        y = mel.transpose(1, 2)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = norm(conv(y))
            y = torch.tanh(y) if i < len(self.convs) - 1 else y
        return y.transpose(1, 2)


@dataclass
class FastSpeech2Output:
    mel: torch.Tensor  # (B, F, n_mels) before the postnet
    mel_postnet: torch.Tensor  # (B, F, n_mels) postnet(mel) + mel: what the vocoder gets
    mel_lengths: torch.Tensor  # (B,) long, frames per utterance (F = max)
    log_duration: torch.Tensor  # (B, T) predicted log(1 + frames)
    duration: torch.Tensor  # (B, T) float, clamp(round(exp(log_d) - 1) * d_control, 0); frames = int(duration)
    pitch: torch.Tensor  # (B, T) or (B, F) by feature level, prediction * p_control
    energy: torch.Tensor  # (B, T) or (B, F), prediction * e_control


class FastSpeech2(nn.Module):
    def __init__(self, cfg: FastSpeech2Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.encoder_hidden
        self.symbol_embedding = nn.Embedding(cfg.n_symbols, d, padding_idx=PAD_ID)
        self.encoder = FFTStack(cfg.encoder_layers, d, cfg.encoder_heads, cfg.conv_filter_size, cfg.conv_kernel_size, cfg.max_seq_len)
        self.speaker_embedding = nn.Embedding(cfg.n_speakers, d) if cfg.n_speakers else None
        self.variance_adaptor = VarianceAdaptor(cfg)
        self.decoder = FFTStack(
            cfg.decoder_layers, cfg.decoder_hidden, cfg.decoder_heads, cfg.conv_filter_size, cfg.conv_kernel_size, cfg.max_seq_len
        )
        self.mel_linear = nn.Linear(cfg.decoder_hidden, cfg.n_mels)
        self.postnet = PostNet(cfg.n_mels, cfg.postnet_channels, cfg.postnet_kernel_size, cfg.postnet_layers)

    @torch.no_grad()
    def forward(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        speakers: torch.Tensor | None = None,
        d_control: float = 1.0,
        p_control: float = 1.0,
        e_control: float = 1.0,
    ) -> FastSpeech2Output:
        """ids (B, T) long (0-padded), lengths (B,) -> everything ming024's forward returns at inference.

        ``d_control`` > 1 speaks slower (durations are scaled, then truncated to whole frames);
        ``p_control``/``e_control`` scale the predicted pitch/energy before bucketing. Unlike
        ming024, ``e_control`` scales energy: ming024 passes ``p_control`` to the energy branch.
        """
        cfg, va = self.cfg, self.variance_adaptor
        src_pad = lengths_to_padding(lengths, ids.shape[1])
        x = self.encoder(self.symbol_embedding(ids), src_pad)
        if self.speaker_embedding is not None:
            if speakers is None:
                raise ValueError(f"this model has {cfg.n_speakers} speakers: pass speakers (B,) ids")
            x = x + self.speaker_embedding(speakers)[:, None, :]

        log_d = va.duration_predictor(x, src_pad)
        pitch = energy = None
        if cfg.pitch_feature == "phoneme_level":
            x, pitch = va.add_pitch(x, src_pad, p_control)
        if cfg.energy_feature == "phoneme_level":
            x, energy = va.add_energy(x, src_pad, e_control)

        # Rounded frames first, then the speed factor; the length regulator truncates with int().
        duration = torch.clamp(torch.round(torch.exp(log_d) - 1) * d_control, min=0)
        x, mel_lengths = regulate_length(x, duration.long())
        if x.shape[1] == 0:  # every duration rounded to 0 frames: nothing to decode
            empty = x.new_zeros(x.shape[0], 0, cfg.n_mels)
            no_frames = empty[..., 0]
            pitch = pitch if pitch is not None else no_frames
            energy = energy if energy is not None else no_frames
            return FastSpeech2Output(empty, empty, mel_lengths, log_d, duration, pitch, energy)
        mel_pad = lengths_to_padding(mel_lengths, x.shape[1])

        if cfg.pitch_feature == "frame_level":
            x, pitch = va.add_pitch(x, mel_pad, p_control)
        if cfg.energy_feature == "frame_level":
            x, energy = va.add_energy(x, mel_pad, e_control)

        mel = self.mel_linear(self.decoder(x, mel_pad))
        assert pitch is not None and energy is not None
        return FastSpeech2Output(mel, self.postnet(mel) + mel, mel_lengths, log_d, duration, pitch, energy)

    def synthesize(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        speakers: torch.Tensor | None = None,
        d_control: float = 1.0,
        p_control: float = 1.0,
        e_control: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) long, lengths (B,) -> (log-mel (B, F, n_mels) after the postnet, frames (B,) long)."""
        out = self.forward(ids, lengths, speakers, d_control, p_control, e_control)
        return out.mel_postnet, out.mel_lengths
