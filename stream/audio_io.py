"""Audio I/O helpers: validated PCM decoding, encoding, and file reading.

Client bytes are never trusted: :func:`decode_pcm` checks the byte count
against the sample width and channel count, the encoding name, and (for float
audio) that every sample is finite, and raises an error with a stable code
(docs/ERRORS.md) saying what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from legato.stream.errors import AudioFormatError, NonFiniteAudioError, SampleRateError
from legato.stream.resample import Resampler

MAX_CHANNELS = 8
S16_FULL_SCALE = 32768.0  # s16le sample value of 1.0


@dataclass(frozen=True)
class PcmFormat:
    """How raw PCM bytes are laid out: ``encoding`` s16le or f32le, interleaved channels."""

    encoding: str
    sample_rate: int
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise AudioFormatError(f"unknown encoding {self.encoding!r}; expected one of {', '.join(ENCODINGS)}")
        if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise SampleRateError(f"sample rate must be a positive integer number of Hz, got {self.sample_rate!r}")
        if not isinstance(self.channels, int) or not 1 <= self.channels <= MAX_CHANNELS:
            raise AudioFormatError(f"channels must be an integer in 1..{MAX_CHANNELS}, got {self.channels!r}")

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample instant across all channels."""
        return ENCODINGS[self.encoding].itemsize * self.channels


ENCODINGS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


def decode_pcm(data: bytes | bytearray | memoryview, fmt: PcmFormat) -> torch.Tensor:
    """Raw PCM bytes -> (num_samples, channels) float32 in [-1, 1].

    f32 samples beyond full scale are clipped to [-1, 1], as a converter would: a model fed 3e38 spends its
    time on garbage (Whisper wrote 170 characters of it in 13 s), and clipping keeps the stream alive where
    a refusal would end a stream whose only fault is one loud chunk. NaN and infinities are refused."""
    size = len(data)
    if size % fmt.bytes_per_frame:
        width = ENCODINGS[fmt.encoding].itemsize
        raise AudioFormatError(
            f"{size} bytes is not a whole number of {fmt.encoding} frames "
            f"({width} bytes x {fmt.channels} channel(s) = {fmt.bytes_per_frame} bytes each)"
        )
    samples = np.frombuffer(data, dtype=ENCODINGS[fmt.encoding])
    if fmt.encoding == "s16le":
        audio = samples.astype(np.float32) / S16_FULL_SCALE
    else:
        audio = samples.astype(np.float32)
        if not np.isfinite(audio).all():
            bad = int((~np.isfinite(audio)).sum())
            raise NonFiniteAudioError(f"{bad} sample(s) are NaN or infinite")
        np.clip(audio, -1.0, 1.0, out=audio)
    return torch.from_numpy(audio.reshape(-1, fmt.channels))


def encode_pcm(audio: torch.Tensor, encoding: str) -> bytes:
    """(num_samples, channels) float32 -> interleaved PCM bytes; s16 is clipped to full scale."""
    if encoding not in ENCODINGS:
        raise AudioFormatError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    x = audio.detach().to(torch.float32).cpu().numpy()
    if encoding == "s16le":
        x = np.clip(np.round(x * S16_FULL_SCALE), -S16_FULL_SCALE, S16_FULL_SCALE - 1).astype("<i2")
    return x.astype(ENCODINGS[encoding]).tobytes()


def check_finite(audio: torch.Tensor) -> None:
    if not bool(torch.isfinite(audio).all()):
        raise NonFiniteAudioError(f"{int((~torch.isfinite(audio)).sum())} sample(s) are NaN or infinite")


def to_mono(audio: torch.Tensor) -> torch.Tensor:
    """(n, C) -> (n, 1) by averaging channels."""
    return audio if audio.shape[1] == 1 else audio.mean(dim=1, keepdim=True)


def expect_channels(audio: torch.Tensor, channels: int) -> None:
    if audio.dim() != 2 or audio.shape[1] != channels:
        got = audio.shape[1] if audio.dim() == 2 else f"shape {tuple(audio.shape)}"
        raise AudioFormatError(f"expected {channels} channel(s), got {got}")


def read_audio(path: str, sample_rate: int | None = None, mono: bool = True) -> tuple[torch.Tensor, int]:
    """Read a file with soundfile -> ((num_samples, channels) float32, sample_rate).

    With ``sample_rate`` the audio is resampled with legato's polyphase
    resampler; with ``mono`` channels are averaged.
    """
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioFormatError(f"cannot read audio file {path}: {exc}") from exc
    audio = torch.from_numpy(np.ascontiguousarray(data))
    check_finite(audio)
    if mono:
        audio = to_mono(audio)
    if sample_rate is not None and sample_rate != rate:
        audio, rate = Resampler(int(rate), sample_rate)(audio), sample_rate
    return audio, int(rate)
