"""Whisper's log-mel front-end (``whisper.audio.log_mel_spectrogram``), offline and streaming.

Whisper computes, for 16 kHz audio of ``n`` samples:

1. ``torch.stft(n_fft=400, hop=160, periodic Hann, center=True)``: reflect
   padding of 200 samples each side, ``n // 160 + 1`` frames;
2. power spectrum of all frames but the last (``n // 160`` frames);
3. Slaney mel filters (whisper's ``mel_filters.npz`` equals librosa's), 80 or
   128 bins; ``log10(max(mel, 1e-10))``;
4. over the whole window: ``max(x, x.max() - 8)``, then ``(x + 4) / 4``.

Step 4 depends on the whole window, so the module's ``forward`` and ``step``
give the raw ``log10`` mel of steps 1-3 and :func:`normalize_window` applies
step 4 to a window of them; :meth:`WhisperMel.log_mel_spectrogram` is
whisper's function. Streaming emits a frame once its 200 samples past centre
are in (the first one needs 201 samples: the reflected head mirrors samples
1..200); ``flush`` mirrors the end and cuts the remaining frames.

Whisper decodes 30 s windows: :func:`pad_or_trim` fits audio to 480000 samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from legato.asr.frontends.framing import Framer, FramingState, check_audio, check_chunk
from legato.asr.frontends.spectral import SAMPLE_RATE, hann_window, slaney_mel_filters
from legato.kernels.spectral import apply_mel, power_spectrum
from legato.stream.module import StreamingModule

N_FFT = 400  # 25 ms at 16 kHz, also the window length
HOP_SAMPLES = 160  # 10 ms at 16 kHz
CHUNK_SECONDS = 30  # whisper's input window
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in a window
N_FRAMES = N_SAMPLES // HOP_SAMPLES  # 3000 frames in a window
MEL_FLOOR = 1e-10  # clamp before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below the window's maximum (80 dB)
MEL_BINS = (80, 128)  # 128 for large-v3


@dataclass(frozen=True)
class WhisperMelConfig:
    """Whisper front-end settings; everything else is fixed by the model family."""

    n_mels: int = 80  # 128 for large-v3 and turbo

    def __post_init__(self) -> None:
        if self.n_mels not in MEL_BINS:
            raise ValueError(f"whisper models use n_mels in {MEL_BINS}, got {self.n_mels}")


def pad_or_trim(audio: torch.Tensor, length: int = N_SAMPLES, axis: int = -1) -> torch.Tensor:
    """Zero-pad or cut ``audio`` along ``axis`` to ``length`` (480000 samples: one 30 s window)."""
    size = audio.shape[axis]
    if size > length:
        return audio.narrow(axis, 0, length)
    if size < length:
        pad = [0, 0] * (audio.dim() - 1 - axis % audio.dim()) + [0, length - size]
        return F.pad(audio, pad)
    return audio


def normalize_window(raw: torch.Tensor) -> torch.Tensor:
    """Whisper's window-level step: (B, T, n_mels) raw log10 mels -> ``(max(x, max - 8) + 4) / 4``.

    The maximum is taken per row (per window). Whisper takes it over its whole
    input tensor, which is the same thing for the one window it passes.
    """
    top = raw.amax(dim=(1, 2), keepdim=True)
    return (torch.maximum(raw, top - DYNAMIC_RANGE) + 4.0) / 4.0


class WhisperMel(StreamingModule):
    """(B, samples) float32 16 kHz -> (B, samples // 160, n_mels) raw log10 mel (before window normalisation)."""

    time_axis = 1

    def __init__(self, config: WhisperMelConfig = WhisperMelConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("window", hann_window(N_FFT, periodic=True), persistent=False)
        self.register_buffer("filters", slaney_mel_filters(config.n_mels, N_FFT), persistent=False)
        # The end mirror always covers the STFT's last frame only if the padding spans a hop.
        assert N_FFT // 2 >= HOP_SAMPLES
        self.framer = Framer(N_FFT, HOP_SAMPLES, pad=N_FFT // 2, pad_mode="reflect")

    @classmethod
    def from_config(cls, config: WhisperMelConfig) -> "WhisperMel":
        return cls(config)

    @staticmethod
    def num_frames(num_samples: int) -> int:
        """Frames for ``num_samples``: ``num_samples // 160`` (whisper drops the STFT's last frame)."""
        return num_samples // HOP_SAMPLES

    def _raw_log_mel(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 400) frames -> (B, T, n_mels) log10 mel energies."""
        if frames.shape[1] == 0:  # most small steps: skip the spectral work
            return frames.new_zeros(frames.shape[0], 0, self.config.n_mels)
        mel = apply_mel(power_spectrum(frames, self.window, N_FFT, 0), self.filters)
        return torch.clamp(mel, min=MEL_FLOOR).log10()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Offline raw log10 mel: (B, n) -> (B, n // 160, n_mels); needs n > 200 (reflect padding)."""
        check_audio(audio)
        return self._raw_log_mel(self.framer.offline(audio)[:, :-1])

    def log_mel_spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """Whisper's ``log_mel_spectrogram``: (B, n) -> (B, n // 160, n_mels), normalised per row."""
        return normalize_window(self.forward(audio))

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> FramingState:
        return self.framer.init_state(batch_size, device or self.param_device())

    def batch_key(self, state: FramingState, row: int) -> int:
        return self.framer.batch_key(state, row)

    def step(self, chunk: torch.Tensor, state: FramingState) -> torch.Tensor:
        """(B, c) samples -> (B, t, n_mels) raw log10 mel frames whose samples are all here."""
        check_chunk(chunk, state.count.shape[0])
        return self._raw_log_mel(self.framer.step(chunk, state))

    def flush(self, state: FramingState) -> torch.Tensor:
        """(B, t, n_mels): the frames that reach into the mirrored end, less the STFT's last frame."""
        return self._raw_log_mel(self.framer.flush(state, drop_last=True))
