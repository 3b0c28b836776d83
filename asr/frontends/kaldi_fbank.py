"""Kaldi log mel filterbank (``compute-fbank-feats``, as ``torchaudio.compliance.kaldi.fbank``), offline and streaming.

FunASR's ``WavFrontend`` calls it on the waveform scaled to 16-bit range with
25 ms hamming frames every 10 ms, 80 bins, no dither, ``energy_floor=0``.
Per frame of 400 samples (``snip_edges``: only frames that fit in the audio):

1. subtract the frame's mean (``remove_dc_offset``);
2. pre-emphasis inside the frame, ``y[j] = x[j] - 0.97 x[max(0, j - 1)]``;
3. symmetric window, zero-padded on the right to a 512-point FFT; power spectrum;
4. Kaldi's triangular mel banks (mel = 1127 ln(1 + f / 700), 20 Hz to Nyquist,
   equal spacing in mel, no area normalisation, Nyquist bin unused);
5. ``ln(max(mel, float32 eps))``.

Everything happens inside one frame, so streaming emits a frame as soon as its
400 samples are in and ``flush`` has nothing left to give.

Audio shorter than one frame gives no frames here. FunASR instead shrinks the
frame to the whole input (one frame, its own window and FFT size); a streaming
front-end cannot know at the first sample which frame length it will need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from legato.asr.frontends.framing import Framer, FramingState, check_audio, check_chunk, frames_in
from legato.asr.frontends.spectral import SAMPLE_RATE, hamming_window, hann_window, next_power_of_two
from legato.kernels.spectral import apply_mel, power_spectrum
from legato.stream.module import StreamingModule

FRAME_MS = 25.0  # 400 samples at 16 kHz
SHIFT_MS = 10.0  # 160 samples at 16 kHz
INT16_SCALE = 32768.0  # FunASR feeds Kaldi the waveform in 16-bit sample units
MEL_LOG_FLOOR = float(np.finfo(np.float32).eps)  # 1.19e-7, Kaldi's floor before the log
MEL_BREAK_HZ = 700.0  # Kaldi mel scale: 1127 ln(1 + f / 700)
MEL_SCALE = 1127.0
SECONDS_PER_MS = 0.001  # torchaudio multiplies by this; dividing by 1000 could truncate differently
WINDOWS = ("hamming", "hanning", "povey", "rectangular")
POVEY_POWER = 0.85  # povey window = hann ** 0.85
COMPUTE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class KaldiFbankConfig:
    """Kaldi fbank settings; defaults are FunASR's WavFrontend (Paraformer, SenseVoice)."""

    sample_rate: int = SAMPLE_RATE  # Hz
    frame_length_ms: float = FRAME_MS
    frame_shift_ms: float = SHIFT_MS
    n_mels: int = 80
    window: str = "hamming"  # Kaldi's default is povey; FunASR sets hamming
    preemph: float = 0.97  # within each frame
    remove_dc_offset: bool = True
    low_freq: float = 20.0  # Hz
    high_freq: float = 0.0  # Hz; <= 0 is an offset from Nyquist
    waveform_scale: float = INT16_SCALE  # 1.0 for audio already in 16-bit units
    # "float64": window, mel edges and spectra in float64, as transformers' numpy extractors (SeamlessM4T). In float32,
    # rounding in the window and FFT leaks from loud bins into quiet ones: the lowest mel bins of speech move by ~2e-3
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if not 0.0 <= self.preemph <= 1.0:
            raise ValueError(f"preemph must lie in [0, 1], got {self.preemph}")
        if not 0 < self.frame_shift_samples <= self.frame_samples:
            raise ValueError("need 0 < frame shift <= frame length")

    @property
    def frame_samples(self) -> int:
        """Frame length in samples (Kaldi truncates): 400 for 25 ms at 16 kHz."""
        return int(self.sample_rate * self.frame_length_ms * SECONDS_PER_MS)

    @property
    def frame_shift_samples(self) -> int:
        """Frame shift in samples: 160 for 10 ms at 16 kHz."""
        return int(self.sample_rate * self.frame_shift_ms * SECONDS_PER_MS)

    @property
    def n_fft(self) -> int:
        """FFT size: the frame rounded up to a power of two (512)."""
        return next_power_of_two(self.frame_samples)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) Kaldi triangles over FFT bins; the Nyquist column is zero.

    Triangle ``m`` rises from mel ``low + m * delta`` to ``low + (m + 1) * delta`` and
    falls to ``low + (m + 2) * delta``, ``delta = (mel(high) - mel(low)) / (n_mels + 1)``.
    Kaldi computes the edges and bin positions in float32 (BaseFloat), and so
    does this: the lowest triangles span only a few FFT bins, and float64 edges
    move their log energies by up to 3e-4 (``dtype=torch.float64``: transformers' edges).
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0.0 else nyquist + high_freq
    if not 0.0 <= low_freq < high <= nyquist:
        raise ValueError(f"need 0 <= low_freq ({low_freq}) < high_freq ({high}) <= Nyquist ({nyquist})")
    mel_low, mel_high = _mel(low_freq), _mel(high)  # Python floats, as Kaldi's scalar edges
    delta = (mel_high - mel_low) / (n_mels + 1)
    index = torch.arange(n_mels, dtype=dtype)[:, None]
    left = mel_low + index * delta
    centre = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    # Kaldi leaves out the Nyquist bin.
    freqs = torch.arange(n_fft // 2, dtype=dtype) * (sample_rate / n_fft)
    bins = MEL_SCALE * torch.log(1.0 + freqs / MEL_BREAK_HZ)
    up = (bins - left) / (centre - left)
    down = (right - bins) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def _mel(freq: float) -> float:
    """Kaldi's mel scale, 1127 ln(1 + f / 700), for one frequency in Hz."""
    return MEL_SCALE * math.log(1.0 + freq / MEL_BREAK_HZ)


def _window(kind: str, length: int, dtype: torch.dtype) -> torch.Tensor:
    if kind == "hamming":
        return hamming_window(length, dtype)
    if kind == "hanning":
        return hann_window(length, periodic=False, dtype=dtype)
    if kind == "povey":
        return hann_window(length, periodic=False, dtype=dtype).pow(POVEY_POWER)
    return torch.ones(length, dtype=dtype)


class KaldiFbank(StreamingModule):
    """(B, samples) float32 at full scale 1.0 -> (B, frames, n_mels) Kaldi log mel filterbank."""

    time_axis = 1

    def __init__(self, config: KaldiFbankConfig = KaldiFbankConfig()):
        super().__init__()
        self.config = config
        c = config
        dtype = COMPUTE_DTYPES[c.compute_dtype]
        self.register_buffer("window", _window(c.window, c.frame_samples, dtype), persistent=False)
        self.register_buffer("banks", kaldi_mel_banks(c.n_mels, c.n_fft, c.sample_rate, c.low_freq, c.high_freq, dtype),
                             persistent=False)
        self.framer = Framer(c.frame_samples, c.frame_shift_samples)

    @classmethod
    def from_config(cls, config: KaldiFbankConfig) -> "KaldiFbank":
        return cls(config)

    def num_frames(self, num_samples: int) -> int:
        """Frames that fit in ``num_samples``: ``1 + (n - 400) // 160``, 0 below one frame."""
        return frames_in(num_samples, self.config.frame_samples, self.config.frame_shift_samples)

    def _fbank(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 400) scaled float32 frames -> (B, T, n_mels) float32 log mel energies (computed in ``compute_dtype``)."""
        if frames.shape[1] == 0:  # most small steps: skip the spectral work
            return frames.new_zeros(frames.shape[0], 0, self.config.n_mels)
        c = self.config
        frames = frames.to(self.window.dtype)
        if c.remove_dc_offset:
            frames = frames - frames.mean(dim=2, keepdim=True)
        if c.preemph:
            # Kaldi's first sample sees itself as its predecessor.
            before = torch.cat([frames[:, :, :1], frames[:, :, :-1]], dim=2)
            frames = frames - c.preemph * before
        mel = apply_mel(power_spectrum(frames, self.window, c.n_fft, 0), self.banks)
        return torch.clamp(mel, min=MEL_LOG_FLOOR).log().float()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Offline: (B, n) -> (B, num_frames(n), n_mels)."""
        check_audio(audio)
        return self._fbank(self.framer.offline(audio * self.config.waveform_scale))

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> FramingState:
        return self.framer.init_state(batch_size, device or self.param_device())

    def batch_key(self, state: FramingState, row: int) -> int:
        return self.framer.batch_key(state, row)

    def step(self, chunk: torch.Tensor, state: FramingState) -> torch.Tensor:
        """(B, c) samples -> (B, t, n_mels): every frame whose 400 samples are all here."""
        check_chunk(chunk, state.count.shape[0])
        return self._fbank(self.framer.step(chunk * self.config.waveform_scale, state))

    def flush(self, state: FramingState) -> torch.Tensor:
        """Nothing is held back: a partial last frame is dropped, as offline (``snip_edges``)."""
        return state.samples.new_zeros(state.samples.shape[0], 0, self.config.n_mels)
