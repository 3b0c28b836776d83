"""NeMo's log-mel front-end (``AudioToMelSpectrogramPreprocessor`` / ``FilterbankFeatures``) at inference.

Per utterance of ``n`` samples:

1. pre-emphasis ``y[i] = x[i] - 0.97 x[i-1]``, ``y[0] = x[0]`` (no dither: NeMo
   dithers only in training);
2. centred STFT, zero padded (``torch.stft(center=True, pad_mode="constant")``),
   symmetric Hann window of 400 samples centred in a 512-point FFT;
3. power spectrum, Slaney mel filters, ``ln(mel + 2**-24)``;
4. optional normalisation over the valid frames (``per_feature``: per mel bin,
   unbiased std; ``all_features``: one mean and std per utterance; both add
   NeMo's 1e-5 to the std);
5. frames at or past the valid length set to ``pad_value``; the frame count
   padded up to a multiple of ``pad_to``.

The STFT gives ``n // hop + 1`` frames but NeMo's valid length is ``n // hop``,
so the last STFT frame is always ``pad_value``.

Only the 400 windowed samples of each 512-sample STFT frame count: frame ``t``
reads input ``[t * hop - 200, t * hop + 200)``. So frames are cut as 400
samples with 200 zeros of padding, then placed 56 samples into the FFT buffer
exactly as torch.stft places its window. Streaming emits a frame as soon as
its last sample is in: 200 samples (12.5 ms) of look-ahead past its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from legato.asr.frontends.framing import Framer, FramingState, centred_frames, check_audio, check_chunk, uniform_count
from legato.asr.frontends.spectral import SAMPLE_RATE, hann_window, slaney_mel_filters
from legato.kernels import dispatch, log_mel
from legato.stream.errors import AudioFormatError
from legato.stream.module import StreamingModule
from legato.stream.state import StreamState

WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms at 16 kHz
N_FFT = 512  # next power of two above the window
LOG_ZERO_GUARD = 2.0**-24  # added before the log, 5.96e-8
STD_GUARD = 1e-5  # NeMo's CONSTANT, added to the normalisation std
NORMALIZE_MODES = ("NA", "per_feature", "all_features")


@dataclass(frozen=True)
class NemoMelConfig:
    """NeMo preprocessor settings. Defaults: the Conformer/FastConformer model configs (80 bins, 25 ms, 512-point FFT)."""

    sample_rate: int = SAMPLE_RATE  # Hz
    window_samples: int = WINDOW_SAMPLES  # NeMo window_size x sample_rate
    hop_samples: int = HOP_SAMPLES  # NeMo window_stride x sample_rate
    n_fft: int = N_FFT
    n_mels: int = 80  # NeMo `features`
    preemph: float = 0.97  # 0 turns pre-emphasis off
    fmin: float = 0.0  # Hz, NeMo `lowfreq`
    fmax: float | None = None  # Hz, NeMo `highfreq`; None is Nyquist
    log_zero_guard: float = LOG_ZERO_GUARD
    normalize: str = "per_feature"  # "NA" (none), "per_feature" or "all_features"
    pad_to: int = 0  # frame count padded up to a multiple of this; 0 keeps it
    pad_value: float = 0.0  # value of frames past the valid length

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")
        if not 0 < self.hop_samples <= self.window_samples <= self.n_fft:
            raise ValueError(f"need 0 < hop ({self.hop_samples}) <= window ({self.window_samples}) <= n_fft ({self.n_fft})")
        if self.n_fft % 2 or self.window_samples % 2:
            # Then the window sits symmetrically in the FFT frame: frames are the window centred on t * hop.
            raise ValueError(f"n_fft ({self.n_fft}) and window_samples ({self.window_samples}) must be even")
        if self.window_samples // 2 < self.hop_samples:
            # Then the STFT's last frame (never valid) always reaches past the audio and comes at flush.
            raise ValueError(f"window_samples ({self.window_samples}) must span at least two hops ({self.hop_samples})")
        if self.pad_to < 0:
            raise ValueError(f"pad_to must be >= 0, got {self.pad_to}")

    @classmethod
    def from_nemo(cls, cfg: Mapping[str, Any]) -> "NemoMelConfig":
        """From a NeMo ``preprocessor`` config (missing keys take AudioToMelSpectrogramPreprocessor's defaults).

        Settings that change the maths in ways not implemented here raise ValueError.
        """
        only = {
            "window": "hann",
            "log": True,
            "log_zero_guard_type": "add",
            "mag_power": 2.0,
            "frame_splicing": 1,
            "exact_pad": False,
            "mel_norm": "slaney",
        }
        for key, want in only.items():
            if key in cfg and cfg[key] != want:
                raise ValueError(f"NeMo preprocessor {key}={cfg[key]!r} is not supported (only {want!r})")
        if cfg.get("log_zero_guard_value", LOG_ZERO_GUARD) in ("tiny", "eps"):
            raise ValueError("log_zero_guard_value 'tiny'/'eps' is not supported; give a number")
        if cfg.get("pad_to") == "max":
            raise ValueError("pad_to='max' is not supported; give a number of frames")
        rate = int(cfg.get("sample_rate", SAMPLE_RATE))
        # NeMo truncates seconds x rate to int.
        window = cfg.get("n_window_size") or int(cfg.get("window_size", 0.02) * rate)
        hop = cfg.get("n_window_stride") or int(cfg.get("window_stride", 0.01) * rate)
        normalize = cfg.get("normalize", "per_feature")
        preemph = cfg.get("preemph", 0.97)  # None turns it off
        return cls(
            sample_rate=rate,
            window_samples=window,
            hop_samples=hop,
            n_fft=cfg.get("n_fft") or 1 << (window - 1).bit_length(),
            n_mels=int(cfg.get("features", 64)),
            preemph=0.0 if preemph is None else float(preemph),
            fmin=float(cfg.get("lowfreq", 0.0)),
            fmax=cfg.get("highfreq"),
            log_zero_guard=float(cfg.get("log_zero_guard_value", LOG_ZERO_GUARD)),
            normalize="NA" if not normalize else normalize,
            pad_to=int(cfg.get("pad_to", 16)),
            pad_value=float(cfg.get("pad_value", 0.0)),
        )


@dataclass(frozen=True, eq=False)
class NemoMelState(StreamState):
    framing: FramingState  # pre-emphasised samples not yet in a frame
    last_sample: torch.Tensor  # (B,) previous raw sample; 0 at start, so y[0] = x[0]


class NemoMel(StreamingModule):
    """(B, samples) float32 16 kHz -> (B, frames, n_mels) NeMo log-mel features."""

    time_axis = 1

    def __init__(self, config: NemoMelConfig = NemoMelConfig()):
        super().__init__()
        self.config = config
        c = config
        self.register_buffer("window", hann_window(c.window_samples, periodic=False), persistent=False)
        self.register_buffer("filters", slaney_mel_filters(c.n_mels, c.n_fft, c.fmin, c.fmax, c.sample_rate), persistent=False)
        self.fft_offset = (c.n_fft - c.window_samples) // 2  # where torch.stft puts a short window
        self.framer = Framer(c.window_samples, c.hop_samples, pad=c.window_samples // 2, pad_mode="constant")

    @classmethod
    def from_config(cls, config: NemoMelConfig | Mapping[str, Any]) -> "NemoMel":
        """From a :class:`NemoMelConfig` or a NeMo ``preprocessor`` config mapping."""
        return cls(config if isinstance(config, NemoMelConfig) else NemoMelConfig.from_nemo(config))

    def valid_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """NeMo's feature length for ``num_samples``: ``num_samples // hop`` (the last STFT frame is not valid)."""
        return num_samples // self.config.hop_samples

    def num_frames(self, num_samples: int) -> int:
        """Frames ``forward`` returns: ``num_samples // hop + 1``, padded up to a multiple of ``pad_to``."""
        frames = centred_frames(num_samples, self.config.hop_samples)
        pad_to = self.config.pad_to
        return frames if not pad_to else math.ceil(frames / pad_to) * pad_to

    def log_mel_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, window) pre-emphasised frames -> (B, T, n_mels) ln mel energies. With ``preemphasis``, the two steps
        ``step`` runs, public for the bulk path, which keeps its streams' framing in its own row arrays."""
        if frames.shape[1] == 0:  # most small steps: skip the spectral work
            return frames.new_zeros(frames.shape[0], 0, self.config.n_mels)
        c = self.config
        return dispatch.call(log_mel.NAME, frames.device, frames, self.window, self.filters, c.n_fft, self.fft_offset,
                             c.log_zero_guard)

    def preemphasis(self, audio: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """y[i] = x[i] - preemph * x[i-1], with ``previous`` (B,) standing for x[-1]."""
        if not self.config.preemph:
            return audio
        before = torch.cat([previous[:, None], audio[:, :-1]], dim=1)
        return audio - self.config.preemph * before

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Offline: (B, n) -> (B, num_frames(n), n_mels).

        ``lengths`` (B,) int gives each row's valid samples in a padded batch,
        as NeMo's ``input_signal_length``: samples past it are zeroed after
        pre-emphasis, and normalisation and masking use ``lengths // hop``.
        """
        check_audio(audio)
        batch, n = audio.shape
        if lengths is None:
            lengths = torch.full((batch,), n, dtype=torch.long, device=audio.device)
        else:
            lengths = lengths.to(audio.device)
            if lengths.shape != (batch,) or lengths.dtype.is_floating_point or bool((lengths < 0).any() | (lengths > n).any()):
                raise AudioFormatError(f"lengths must be ({batch},) integers in [0, {n}], got {lengths.dtype} {tuple(lengths.shape)}")
        y = self.preemphasis(audio, audio.new_zeros(batch))
        y = y.masked_fill(torch.arange(n, device=audio.device)[None, :] >= lengths[:, None], 0.0)
        x = self.log_mel_frames(self.framer.offline(y))
        valid = self.valid_frames(lengths)
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < valid[:, None])[..., None]  # (B, T, 1)
        x = _normalize(x, mask, valid, self.config.normalize)
        x = x.masked_fill(~mask, self.config.pad_value)
        return self._pad_to(x)

    def _pad_to(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the frame count (axis 1) of (B, T, F) up to a multiple of ``pad_to`` with ``pad_value``."""
        pad_to = self.config.pad_to
        extra = (-x.shape[1]) % pad_to if pad_to else 0
        return F.pad(x, (0, 0, 0, extra), value=self.config.pad_value) if extra else x

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> NemoMelState:
        if self.config.normalize != "NA":
            raise ValueError(
                f"normalize={self.config.normalize!r} needs the whole utterance's statistics and cannot stream; "
                "use normalize='NA' for streaming"
            )
        device = device or self.param_device()
        return NemoMelState(
            framing=self.framer.init_state(batch_size, device),
            last_sample=torch.zeros(batch_size, device=device),
        )

    def batch_key(self, state: NemoMelState, row: int) -> int:
        return self.framer.batch_key(state.framing, row)

    def step(self, chunk: torch.Tensor, state: NemoMelState) -> torch.Tensor:
        """(B, c) samples -> (B, t, n_mels): each frame whose 400 samples are all here."""
        check_chunk(chunk, state.last_sample.shape[0])
        if chunk.shape[1] == 0:
            return chunk.new_zeros(chunk.shape[0], 0, self.config.n_mels)
        y = self.preemphasis(chunk, state.last_sample)
        state.last_sample.copy_(chunk[:, -1])
        return self.log_mel_frames(self.framer.step(y, state.framing))

    def flush(self, state: NemoMelState) -> torch.Tensor:
        """(B, t, n_mels): frames reaching into the end padding, the invalid last frame, ``pad_to`` padding."""
        seen = uniform_count(state.framing.seen, "stream positions")
        x = self.log_mel_frames(self.framer.flush(state.framing))
        # The STFT's last frame (never valid) reaches half a window past its centre, beyond the audio: it is always here.
        x[:, -1] = self.config.pad_value
        pad_to = self.config.pad_to
        extra = (-centred_frames(seen, self.config.hop_samples)) % pad_to if pad_to else 0
        return F.pad(x, (0, 0, 0, extra), value=self.config.pad_value) if extra else x


def _normalize(x: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, mode: str) -> torch.Tensor:
    """NeMo's normalize_batch on (B, T, F) log-mels; ``mask`` (B, T, 1) marks the ``valid`` (B,) frames."""
    if mode == "NA":
        return x
    if mode == "per_feature":
        count = valid.to(x.dtype)[:, None]  # (B, 1)
        mean = torch.where(mask, x, 0.0).sum(dim=1) / count  # (B, F)
        centred = x - mean[:, None]
        var = torch.where(mask, centred, 0.0).square().sum(dim=1) / (count - 1.0)
        std = var.sqrt().nan_to_num(nan=0.0) + STD_GUARD  # one frame: NeMo sets the nan std to 0
        return centred / std[:, None]
    count = (valid * x.shape[2]).to(x.dtype)  # (B,) all bins of all valid frames
    mean = torch.where(mask, x, 0.0).sum(dim=(1, 2)) / count
    centred = x - mean[:, None, None]
    std = (torch.where(mask, centred, 0.0).square().sum(dim=(1, 2)) / (count - 1.0)).sqrt() + STD_GUARD
    return centred / std[:, None, None]

