"""Cutting audio into overlapping analysis frames, offline and chunk by chunk, with identical frames.

Frame ``t`` covers samples ``[t * hop, t * hop + frame_length)`` of the
*padded* signal: the audio with ``pad`` samples added before and after it.
Three paddings cover the front-ends here:

* ``"none"``: Kaldi's ``snip_edges``; only frames that fit inside the audio.
* ``"constant"``: zeros, as NeMo's centred ``torch.stft(pad_mode="constant")``.
* ``"reflect"``: the mirror image without the edge sample, as torch's
  ``reflect`` (Whisper). The head mirrors input samples ``1..pad``, the tail
  samples ``n - 1 - pad .. n - 2``.

Streaming keeps the padded samples from the next frame's start onward in a
buffer of ``frame_length`` samples: fewer are ever left over, since a full
frame would have been emitted. A fresh zero-padded stream starts with its
``pad`` zeros already buffered; a reflect stream holds raw samples until it
has ``pad + 1`` of them (the mirror needs sample ``pad``), then writes the
mirrored head. A reflect stream also keeps one sample before the next frame
start: the end mirror of the last frame can reach one sample further back than
that frame itself. ``flush`` appends the end padding and cuts the last frames.

Rows of one streaming batch may be at different positions, but must share a
*phase* (``batch_key``): the buffered sample count, and for reflect padding
whether the head mirror is still pending and whether a lead sample is kept.
The frame count of a step depends only on that phase and the chunk length, and
the output is one tensor. The engine groups streams by ``batch_key``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from legato.stream.errors import AudioFormatError, NonFiniteAudioError
from legato.stream.state import StreamState

PAD_MODES = ("none", "constant", "reflect")


def frames_in(num_samples: int, frame_length: int, hop: int) -> int:
    """Frames of ``frame_length`` every ``hop`` that fit in ``num_samples`` (Kaldi's snip_edges count)."""
    if num_samples < frame_length:
        return 0
    return 1 + (num_samples - frame_length) // hop


def centred_frames(num_samples: int, hop: int) -> int:
    """Frames of a centred STFT whose padding is half its frame: ``num_samples // hop + 1``."""
    return num_samples // hop + 1


def check_audio(audio: torch.Tensor, what: str = "audio") -> None:
    """Raise a clear error unless ``audio`` is finite float32 of shape (batch, num_samples)."""
    if not isinstance(audio, torch.Tensor):
        raise AudioFormatError(f"{what} must be a torch.Tensor, got {type(audio).__name__}")
    if audio.dim() != 2:
        raise AudioFormatError(f"{what} must be (batch, num_samples) mono samples, got shape {tuple(audio.shape)}")
    if audio.dtype != torch.float32:
        raise AudioFormatError(f"{what} must be float32 samples (full scale 1.0), got {audio.dtype}")
    if audio.numel() and not bool(torch.isfinite(audio).all()):
        raise NonFiniteAudioError(f"{what} contains NaN or infinite samples")


def check_chunk(chunk: torch.Tensor, batch_size: int) -> None:
    """:func:`check_audio` for a streaming chunk, whose rows must match the state's ``batch_size``."""
    check_audio(chunk, "chunk")
    if chunk.shape[0] != batch_size:
        raise AudioFormatError(f"chunk has {chunk.shape[0]} rows, the stream state has {batch_size}")


def uniform_count(counter: torch.Tensor, what: str) -> int:
    """Row 0 of a (B,) int64 counter as an int; all rows of a batch must agree."""
    first = int(counter[0])
    if counter.numel() > 1 and bool((counter != first).any()):
        raise ValueError(
            f"batch rows are at different {what}; a front-end steps streams together only "
            "when their batch_key agrees (group them by it, or step them separately)"
        )
    return first


@dataclass(frozen=True, eq=False)
class FramingState(StreamState):
    samples: torch.Tensor  # (B, frame_length) padded samples from the next frame's start (raw ones before a reflect head)
    count: torch.Tensor  # (B,) int64 valid entries at the start of ``samples``
    seen: torch.Tensor  # (B,) int64 input samples received so far


class Framer:
    """Frames of ``frame_length`` samples every ``hop`` of the audio padded by ``pad`` on each side."""

    def __init__(self, frame_length: int, hop: int, pad: int = 0, pad_mode: str = "none"):
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if not 0 < hop <= frame_length:
            raise ValueError(f"hop must lie in [1, frame_length={frame_length}], got {hop}")
        if pad_mode == "none":
            pad = 0
        # The buffer of frame_length samples must hold a fresh stream's padding.
        if not 0 <= pad < frame_length:
            raise ValueError(f"pad must lie in [0, frame_length), got {pad}")
        self.frame_length, self.hop, self.pad, self.pad_mode = frame_length, hop, pad, pad_mode
        self.reflect = pad_mode == "reflect" and pad > 0
        # Samples kept before the next frame start: the end mirror reaches one further back.
        self.lead = 1 if self.reflect else 0

    def num_frames(self, num_samples: int) -> int:
        """Frames for ``num_samples`` of audio, padding included."""
        return frames_in(num_samples + 2 * self.pad, self.frame_length, self.hop)

    def _frames(self, padded: torch.Tensor, count: int) -> torch.Tensor:
        """The first ``count`` frames of ``padded`` (B, n) as (B, count, frame_length)."""
        if count == 0:
            return padded.new_zeros(padded.shape[0], 0, self.frame_length)
        return padded.unfold(1, self.frame_length, self.hop)[:, :count]

    def _mirror_head(self, raw: torch.Tensor) -> torch.Tensor:
        return raw[:, 1 : self.pad + 1].flip(1)

    def _mirror_tail(self, raw: torch.Tensor) -> torch.Tensor:
        n = raw.shape[1]
        return raw[:, n - 1 - self.pad : n - 1].flip(1)

    def offline(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, n) audio -> (B, num_frames(n), frame_length) frames (views into a padded copy)."""
        n = audio.shape[1]
        if self.reflect:
            if n <= self.pad:
                raise ValueError(f"reflect padding of {self.pad} samples needs more than {self.pad} samples, got {n}")
            padded = torch.cat([self._mirror_head(audio), audio, self._mirror_tail(audio)], dim=1)
        elif self.pad:
            padded = torch.nn.functional.pad(audio, (self.pad, self.pad))
        else:
            padded = audio
        return self._frames(padded, self.num_frames(n))

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> FramingState:
        """Fresh state; a zero-padded stream starts with its ``pad`` zeros already buffered."""
        start = self.pad if self.pad_mode == "constant" else 0
        return FramingState(
            samples=torch.zeros(batch_size, self.frame_length, device=device),
            count=torch.full((batch_size,), start, dtype=torch.long, device=device),
            seen=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def _lead_before(self, seen: int) -> int:
        """Samples buffered ahead of the next frame start once ``seen`` inputs arrived."""
        if not self.lead or seen <= self.pad:
            return 0
        emitted = frames_in(seen + self.pad, self.frame_length, self.hop)
        return min(self.lead, emitted * self.hop)

    def phase(self, state: FramingState) -> torch.Tensor:
        """(B,) int64: rows with equal values cut the same frames from equal chunks."""
        key = state.count * 4
        if self.reflect:
            key = key + (state.seen <= self.pad).long() * 2 + (state.seen + self.pad >= self.frame_length).long()
        return key

    def batch_key(self, state: FramingState, row: int) -> int:
        return int(self.phase(state)[row])

    def _uniform_phase(self, state: FramingState) -> tuple[int, int]:
        """(seen, count) of row 0, after checking every row shares its phase."""
        uniform_count(self.phase(state), "framing phases")
        return int(state.seen[0]), int(state.count[0])

    def _emit(self, state: FramingState, padded: torch.Tensor, lead: int, added: int, drop_last: bool = False) -> torch.Tensor:
        """Cut the complete frames of ``padded[:, lead:]``; keep the rest (and a new lead) in ``state``."""
        body = padded.shape[1] - lead
        count = frames_in(body, self.frame_length, self.hop)
        frames = self._frames(padded[:, lead:], max(0, count - drop_last))
        keep_from = lead + count * self.hop
        keep_from -= min(self.lead, keep_from)
        rest = padded[:, keep_from:]
        state.samples[:, : rest.shape[1]].copy_(rest)
        state.count.fill_(rest.shape[1])
        state.seen.add_(added)
        return frames

    def step(self, chunk: torch.Tensor, state: FramingState) -> torch.Tensor:
        """(B, c) samples -> (B, t, frame_length): every frame whose samples are all here now."""
        seen, count = self._uniform_phase(state)  # row 0's position stands for the phase all rows share
        held = state.samples[:, :count]
        added = chunk.shape[1]
        total = seen + added
        if self.reflect and seen <= self.pad:
            # The head mirrors samples 1..pad: hold raw samples until sample `pad` is here.
            raw = torch.cat([held, chunk], dim=1)
            if total <= self.pad:
                state.samples[:, :total].copy_(raw)
                state.count.fill_(total)
                state.seen.add_(added)
                return chunk.new_zeros(chunk.shape[0], 0, self.frame_length)
            return self._emit(state, torch.cat([self._mirror_head(raw), raw], dim=1), 0, added)
        return self._emit(state, torch.cat([held, chunk], dim=1), self._lead_before(seen), added)

    def flush(self, state: FramingState, drop_last: bool = False) -> torch.Tensor:
        """(B, t, frame_length): the frames that reach into the end padding (none for ``"none"``).

        ``drop_last`` leaves out the very last frame of the signal (Whisper drops it).
        """
        seen = uniform_count(state.seen, "stream positions")
        count = int(state.count[0])  # follows from `seen`, so the rows agree
        batch = state.samples.shape[0]
        if self.pad == 0:
            return state.samples.new_zeros(batch, 0, self.frame_length)
        held = state.samples[:, :count]
        if not self.reflect:
            padded = torch.cat([held, held.new_zeros(batch, self.pad)], dim=1)
            return self._emit(state, padded, 0, 0, drop_last)
        if seen <= self.pad:
            raise ValueError(f"reflect padding of {self.pad} samples needs more than {self.pad} samples, stream has {seen}")
        lead = self._lead_before(seen)
        if count < self.pad + 1:
            # Only when no frame is left to cut: the tail mirror reaches pad + 1 samples back.
            if frames_in(count - lead + self.pad, self.frame_length, self.hop) > drop_last:
                raise RuntimeError("framing buffer lost samples the end mirror needs (frame_length < 2 * pad?)")
            return held.new_zeros(batch, 0, self.frame_length)
        return self._emit(state, torch.cat([held, self._mirror_tail(held)], dim=1), lead, 0, drop_last)
