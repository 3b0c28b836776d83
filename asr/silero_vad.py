"""Silero VAD (the ``silero-vad`` package's ONNX weights) as a batched streaming module, and endpointing.

The network scores 32 ms frames (512 samples at 16 kHz). Each call sees the
frame plus the previous 64 samples, and carries a (2, 128) recurrent state.
Both are per-stream state here, batch first, so many streams' frames score in
one ONNX run and a stream can join or leave at any frame.

:class:`Endpointer` turns probabilities into speech start / end decisions:
speech starts at a frame with probability >= ``threshold``; it ends after
``min_silence_ms`` of frames below ``threshold - 0.15`` (hysteresis, as the
reference VADIterator).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

import numpy as np
import torch

from legato.stream.module import StreamingModule
from legato.stream.state import StreamState

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # 32 ms at 16 kHz: the only frame size the 16 kHz model takes
CONTEXT_SAMPLES = 64  # previous samples the model sees with each frame
STATE_SIZE = 128
HYSTERESIS = 0.15  # speech ends below threshold - this


@dataclass(frozen=True, eq=False)
class VadState(StreamState):
    rnn: torch.Tensor  # (B, 2, 128) recurrent state
    context: torch.Tensor  # (B, 64) last samples of the previous frame
    pending: torch.Tensor  # (B, 512) samples of a frame not yet complete
    pending_count: torch.Tensor  # (B,) int64


def default_model_path() -> str:
    return str(importlib.resources.files("silero_vad") / "data" / "silero_vad.onnx")


class SileroVad(StreamingModule):
    """(B, samples) float32 16 kHz -> (B, frames) speech probabilities, one per complete 512-sample frame."""

    time_axis = 1

    def __init__(self, model_path: str | None = None):
        super().__init__()
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(model_path or default_model_path(), sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def init_state(self, batch_size: int, device=None) -> VadState:
        return VadState(
            rnn=torch.zeros(batch_size, 2, STATE_SIZE),
            context=torch.zeros(batch_size, CONTEXT_SAMPLES),
            pending=torch.zeros(batch_size, FRAME_SAMPLES),
            pending_count=torch.zeros(batch_size, dtype=torch.long),
        )

    def batch_key(self, state: VadState, row: int) -> int:
        return int(state.pending_count[row])

    def _frame(self, frame: torch.Tensor, state: VadState) -> torch.Tensor:
        """(B, 512) -> (B,) probabilities; updates the recurrent state and context."""
        x = torch.cat([state.context, frame], dim=1).numpy()
        prob, rnn = self.session.run(None, {"input": x, "state": state.rnn.transpose(0, 1).contiguous().numpy(), "sr": self._sr})
        state.rnn.copy_(torch.from_numpy(rnn).transpose(0, 1))
        state.context.copy_(frame[:, -CONTEXT_SAMPLES:])
        return torch.from_numpy(prob)[:, 0]

    def step(self, chunk: torch.Tensor, state: VadState) -> torch.Tensor:
        held = int(state.pending_count[0])  # rows share it (batch_key)
        audio = torch.cat([state.pending[:, :held], chunk.to(torch.float32)], dim=1)
        n = audio.shape[1] // FRAME_SAMPLES
        probs = [self._frame(audio[:, i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES], state) for i in range(n)]
        rest = audio[:, n * FRAME_SAMPLES :]
        state.pending[:, : rest.shape[1]].copy_(rest)
        state.pending_count.fill_(rest.shape[1])
        return torch.stack(probs, dim=1) if probs else chunk.new_zeros(chunk.shape[0], 0)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Offline: probabilities of every complete frame (a partial last frame is not scored)."""
        state = self.init_state(audio.shape[0])
        return self.step(audio, state)


@dataclass
class Endpointer:
    """Speech/silence decisions for one stream from frame probabilities."""

    threshold: float = 0.5
    min_silence_ms: int = 500
    in_speech: bool = False
    silence_frames: int = 0

    @property
    def min_silence_frames(self) -> int:
        return max(1, round(self.min_silence_ms * SAMPLE_RATE / 1000 / FRAME_SAMPLES))

    def update(self, probs: list[float]) -> list[str]:
        """Events per frame batch: "start" when speech begins, "end" when enough silence follows it."""
        events = []
        for p in probs:
            if p >= self.threshold:
                self.silence_frames = 0
                if not self.in_speech:
                    self.in_speech = True
                    events.append("start")
            elif self.in_speech and p < self.threshold - HYSTERESIS:
                self.silence_frames += 1
                if self.silence_frames >= self.min_silence_frames:
                    self.in_speech, self.silence_frames = False, 0
                    events.append("end")
        return events
