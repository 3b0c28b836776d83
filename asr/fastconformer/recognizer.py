"""A loaded FastConformer with its tokenizer: lookahead choice and offline transcription.

Offline transcription runs the whole-utterance encoder with the chosen
lookahead's chunked_limited mask; its tokens equal what streaming the same
audio gives (tested), so a file and a live stream read the same.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from legato.asr.fastconformer.model import FastConformerModel
from legato.asr.fastconformer.nemo_file import load_nemo
from legato.asr.fastconformer.tokenizer import SentencePieceTokenizer
from legato.asr.fastconformer.words import split_at_pauses, words_from_tokens
from legato.asr.frontends.nemo_mel import NemoMel
from legato.asr.whisper.transcribe import Segment

SEGMENT_PAUSE_S = 1.0  # offline transcripts start a new segment after a pause this long


class BadStreamOption(ValueError):
    code = "bad_request"


class FastConformerRecognizer:
    def __init__(self, model: FastConformerModel, tokenizer: SentencePieceTokenizer, name: str):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        # pad_to only appends invalid frames; streaming never wants them.
        self.mel = NemoMel(replace(model.cfg.mel, pad_to=0)).to(model.param_device())
        self.frame_s = model.cfg.encoder.subsampling_factor * model.cfg.mel.hop_samples / model.cfg.mel.sample_rate
        self.sample_rate = model.cfg.mel.sample_rate

    @classmethod
    def from_nemo(cls, path: str | Path, device: str | torch.device = "cpu", name: str | None = None) -> "FastConformerRecognizer":
        model, tokenizer = load_nemo(path, device)
        return cls(model, tokenizer, name or f"fastconformer:{Path(path).stem}")

    @property
    def lookaheads_ms(self) -> list[int]:
        """Each lookahead's right context in milliseconds (NeMo's 0 / 80 / 480 / 1040 ms family)."""
        return [round(la.right * self.frame_s * 1000) for la in self.model.cfg.encoder.lookaheads]

    def lookahead_index(self, lookahead_ms: int | None) -> int:
        """The lookahead with exactly this right context; None is the model's default (its first)."""
        if lookahead_ms is None:
            return 0
        options = self.lookaheads_ms
        if lookahead_ms not in options:
            raise BadStreamOption(f"lookahead_ms {lookahead_ms} is not one of this model's lookaheads: {options}")
        return options.index(lookahead_ms)

    def check_decoder(self, decoder: str | None) -> str:
        try:
            return self.model.check_decoder(decoder)
        except ValueError as exc:
            raise BadStreamOption(str(exc)) from None

    @torch.inference_mode()
    def transcribe_tokens(self, audio: torch.Tensor, lookahead_ms: int | None = None, decoder: str | None = None) -> tuple[list[int], list[int]]:
        """(n,) float32 mono at the model's rate -> token ids and their encoder frames."""
        device = self.model.param_device()
        audio = audio.to(device, torch.float32)[None]
        mel = self.mel(audio)
        lengths = self.mel.valid_frames(torch.tensor([audio.shape[1]], device=device))
        enc, enc_len = self.model.encoder(mel, lengths, self.lookahead_index(lookahead_ms))
        greedy = self.model.greedy_decoder(self.check_decoder(decoder))
        tokens, frames = greedy.decode(enc, enc_len, greedy.init_state(1, device))
        return tokens[0], frames[0]

    def transcribe(self, audio: torch.Tensor, lookahead_ms: int | None = None, decoder: str | None = None) -> list[Segment]:
        tokens, frames = self.transcribe_tokens(audio, lookahead_ms, decoder)
        words = words_from_tokens(self.tokenizer, tokens, frames, self.frame_s)
        return [
            Segment(seg[0].start_s, seg[-1].end_s, " " + " ".join(w.word for w in seg), ())
            for seg in split_at_pauses(words, SEGMENT_PAUSE_S)
        ]
