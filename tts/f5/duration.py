"""How many mel frames F5-TTS generates: its duration rule and the reference-audio conventions around it.

F5-TTS has no duration model. ``infer/utils_infer.py::infer_batch_process`` speaks the new text at the
reference's rate of frames per UTF-8 byte:

    ref_frames = ref_samples // 256                      (reference at 24 kHz, after RMS normalisation)
    ref_text  += " "   if its last character is one UTF-8 byte (ASCII)
    speed      = 0.3   if the new text is under 10 UTF-8 bytes (short texts get room)
    total      = ref_frames + int(ref_frames / bytes(ref_text) * bytes(gen_text) / speed)

``total`` counts reference + generated frames; ``ref_frames`` is also where the generated part starts.
The model sees the symbols of ``ref_text + gen_text`` (after the space rule).
"""

from __future__ import annotations

import torch

from legato.tts.f5.config import HOP_SAMPLES, SAMPLE_RATE

TARGET_RMS = 0.1  # quieter references are scaled up to this RMS; the output is scaled back down by the same factor
SHORT_TEXT_BYTES = 10  # below this, F5-TTS uses speed 0.3
SHORT_TEXT_SPEED = 0.3
MAX_REF_SECONDS = 22  # long text is split so that reference + chunk fit about 22 s (infer_process)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def prompt_text(ref_text: str) -> str:
    """The reference transcript as F5-TTS joins it to the new text: a space added after an ASCII last character."""
    return ref_text + " " if ref_text and utf8_len(ref_text[-1]) == 1 else ref_text


def reference_frames(ref_samples: int, hop: int = HOP_SAMPLES) -> int:
    """Frames credited to a reference of ``ref_samples`` samples at 24 kHz (its mel has one more: centred STFT)."""
    return ref_samples // hop


def total_frames(ref_samples: int, ref_text: str, gen_text: str, speed: float = 1.0, hop: int = HOP_SAMPLES,
                 fix_duration_s: float | None = None) -> int:
    """Reference + generated frames for one request, by F5-TTS's rule (``fix_duration_s``: whole length in s)."""
    if fix_duration_s is not None:
        return int(fix_duration_s * SAMPLE_RATE / hop)
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    ref_bytes = utf8_len(prompt_text(ref_text))
    if ref_bytes == 0:
        raise ValueError("the reference text is empty; F5-TTS's duration rule needs its length")
    gen_bytes = utf8_len(gen_text)
    if gen_bytes < SHORT_TEXT_BYTES:
        speed = SHORT_TEXT_SPEED
    ref = reference_frames(ref_samples, hop)
    return ref + int(ref / ref_bytes * gen_bytes / speed)


def max_chunk_bytes(ref_samples: int, ref_text: str, speed: float = 1.0, sample_rate: int = SAMPLE_RATE) -> int:
    """F5-TTS's byte budget per text chunk (``infer_process``): keeps reference + chunk near 22 s.

    Uses the raw reference transcript (no space rule) and the reference length at its own rate."""
    seconds = ref_samples / sample_rate
    return int(utf8_len(ref_text) / seconds * (MAX_REF_SECONDS - seconds) * speed)


def normalise_reference(audio: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(n,) reference at 24 kHz -> (audio scaled up to RMS 0.1 if quieter, factor to apply to the output)."""
    rms = float(torch.sqrt(torch.mean(torch.square(audio))))
    if 0 < rms < TARGET_RMS:
        return audio * (TARGET_RMS / rms), rms / TARGET_RMS
    return audio, 1.0
