"""A loaded FunASR Paraformer folder as a recognizer: whole-clip transcription and the streaming chunk plan.

The streaming plan is FunASR's (``ParaformerStreaming.inference`` fed ``stride * 960``-sample pieces): every full
piece of ``chunk_samples`` is one step of ``stride`` LFR frames; at the end, a remainder of at least one LFR hop
(960 samples) is a final step over the rest of the frames, a shorter one (or none) is the *tail chunk*. So a
stream's tokens depend only on its audio, never on how a client cut it into messages.
"""

from __future__ import annotations

from pathlib import Path

import torch

from legato.asr.paraformer.loader import ParaformerBundle, load_paraformer
from legato.asr.paraformer.streaming import ChunkConfig, StreamingParaformer
from legato.asr.paraformer.text import sentence

SAMPLE_RATE = 16000


class ParaformerRecognizer:
    def __init__(self, bundle: ParaformerBundle, name: str, chunk: ChunkConfig = ChunkConfig()):
        self.bundle, self.name, self.chunk = bundle, name, chunk
        self.model, self.frontend, self.tokens = bundle.model, bundle.frontend, bundle.tokens
        self.sample_rate = SAMPLE_RATE
        self.streaming = bundle.model.cfg.streaming
        lfr = self.frontend.lfr.config
        self.frame_samples = lfr.lfr_n * self.frontend.fbank.config.frame_shift_samples  # 960: one LFR frame
        self.frame_s = self.frame_samples / SAMPLE_RATE
        self.chunk_samples = chunk.stride * self.frame_samples  # 9600 for stride 10
        self.streamer = StreamingParaformer(self.model, chunk) if self.streaming else None

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu", chunk: ChunkConfig = ChunkConfig()) -> "ParaformerRecognizer":
        folder = Path(folder)
        return cls(load_paraformer(folder, device), f"paraformer:{folder.name}", chunk)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def text(self, ids: list[int]) -> str:
        return sentence([self.tokens[i] for i in ids])

    @torch.inference_mode()
    def offline_ids(self, audio: torch.Tensor) -> list[int]:
        """(n,) 16 kHz float32 -> token ids of the whole clip with full context (offline model)."""
        feats = self.frontend(audio.to(self.device, torch.float32)[None])
        return self.model(feats, torch.tensor([feats.shape[1]], device=self.device)).ids[0]

    @torch.inference_mode()
    def streaming_ids(self, audio: torch.Tensor) -> list[list[int]]:
        """(n,) 16 kHz float32 -> token ids per streaming step (FunASR's chunk loop over the whole clip): the
        whole-clip form that ``ParaformerStage`` must equal however the audio arrives (tests)."""
        audio = audio.to(self.device, torch.float32)
        feats = self.frontend(audio[None])[0]
        full, rest = divmod(audio.shape[0], self.chunk_samples)
        state = self.streamer.init_state(1)
        out = []
        stride = self.chunk.stride
        for k in range(full):
            out.append(self.streamer.step(feats[None, k * stride : (k + 1) * stride], state).ids[0])
        if rest >= self.frame_samples:
            out.append(self.streamer.step(feats[None, full * stride :], state, final=True).ids[0])
        else:
            out.append(self.streamer.step(None, state, final=True).ids[0])
        return out
