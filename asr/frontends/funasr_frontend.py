"""FunASR's ``WavFrontend`` (Paraformer, SenseVoice): Kaldi fbank, then LFR stacking, then CMVN.

(B, samples) float32 16 kHz -> (B, ceil(T / 6), 560) with ``T = 1 + (n - 400) // 160``
fbank frames. Streaming chains the parts' streaming forms: an fbank frame per
full 400-sample window, an LFR frame once its 7 fbank frames exist, and the
end-padded LFR frames at ``flush``.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Any, Mapping

import torch

from legato.asr.frontends.framing import FramingState
from legato.asr.frontends.kaldi_fbank import INT16_SCALE, KaldiFbank, KaldiFbankConfig
from legato.asr.frontends.lfr_cmvn import Cmvn, Lfr, LfrConfig, LfrState, lfr_frames
from legato.stream.module import StreamingModule
from legato.stream.state import StreamState


@dataclass(frozen=True, eq=False)
class FunasrFrontendState(StreamState):
    fbank: FramingState
    lfr: LfrState


class FunasrFrontend(StreamingModule):
    """Kaldi fbank -> LFR -> CMVN (CMVN left out when ``cmvn`` is None)."""

    time_axis = 1

    def __init__(self, fbank: KaldiFbankConfig = KaldiFbankConfig(), lfr: LfrConfig = LfrConfig(), cmvn: Cmvn | None = None):
        super().__init__()
        self.fbank = KaldiFbank(fbank)
        self.lfr = Lfr(lfr, fbank.n_mels)
        self.cmvn = cmvn
        self.num_features = lfr.lfr_m * fbank.n_mels

    @classmethod
    def from_config(cls, fbank: KaldiFbankConfig, lfr: LfrConfig, am_mvn: str | PathLike | None = None) -> "FunasrFrontend":
        """From the two configs and the path of the model's ``am.mvn`` (None: no CMVN)."""
        return cls(fbank, lfr, Cmvn.from_am_mvn(am_mvn) if am_mvn is not None else None)

    @classmethod
    def from_funasr(cls, frontend_conf: Mapping[str, Any], cmvn_file: str | PathLike | None = None) -> "FunasrFrontend":
        """From a FunASR ``frontend_conf`` (missing keys take WavFrontend's defaults) and ``cmvn_file``.

        ``dither`` is ignored: legato's front-ends are deterministic, as inference should be.
        """
        if not frontend_conf.get("snip_edges", True):
            raise ValueError("snip_edges=False is not supported")
        fbank = KaldiFbankConfig(
            sample_rate=int(frontend_conf.get("fs", 16000)),
            frame_length_ms=float(frontend_conf.get("frame_length", 25)),
            frame_shift_ms=float(frontend_conf.get("frame_shift", 10)),
            n_mels=int(frontend_conf.get("n_mels", 80)),
            window=frontend_conf.get("window", "hamming"),
            waveform_scale=INT16_SCALE if frontend_conf.get("upsacle_samples", True) else 1.0,
        )
        lfr = LfrConfig(int(frontend_conf.get("lfr_m", 1)), int(frontend_conf.get("lfr_n", 1)))
        return cls.from_config(fbank, lfr, cmvn_file)

    def num_frames(self, num_samples: int) -> int:
        """Output frames for ``num_samples``: ``ceil(fbank_frames / lfr_n)``."""
        return lfr_frames(self.fbank.num_frames(num_samples), self.lfr.config.lfr_n)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.cmvn is None else self.cmvn(x)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Offline: (B, n) -> (B, num_frames(n), lfr_m * n_mels)."""
        return self._normalize(self.lfr(self.fbank(audio)))

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> FunasrFrontendState:
        device = device or self.param_device()
        return FunasrFrontendState(fbank=self.fbank.init_state(batch_size, device), lfr=self.lfr.init_state(batch_size, device))

    def batch_key(self, state: FunasrFrontendState, row: int) -> tuple[int, int]:
        return (self.fbank.batch_key(state.fbank, row), self.lfr.batch_key(state.lfr, row))

    def step(self, chunk: torch.Tensor, state: FunasrFrontendState) -> torch.Tensor:
        """(B, c) samples -> (B, k, lfr_m * n_mels): every output whose fbank frames all exist."""
        return self._normalize(self.lfr.step(self.fbank.step(chunk, state.fbank), state.lfr))

    def flush(self, state: FunasrFrontendState) -> torch.Tensor:
        """(B, k, lfr_m * n_mels): the outputs padded with copies of the last fbank frame."""
        tail = self.lfr.step(self.fbank.flush(state.fbank), state.lfr)
        return self._normalize(torch.cat([tail, self.lfr.flush(state.lfr)], dim=1))
