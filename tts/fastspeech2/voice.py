"""A FastSpeech 2 + HiFi-GAN voice: text -> sentences -> ARPAbet -> mel -> streamed waveform.

Text is normalised (numbers, abbreviations), split into sentences, and each
sentence goes through ming024's English front-end (lexicon first, g2p_en's
network for other words) and FastSpeech 2 in one pass; its mel is vocoded in
``chunk_frames`` pieces by the exact HiFi-GAN streamer. So the first audio
comes after the first sentence's acoustic model plus one chunk and the
vocoder's lookahead, and a cancel stops work between chunks. ``speed`` scales
durations (``d_control = 1 / speed``).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from legato.codecs.hifigan import HifiGan, HifiGanStreamer, load_hifigan
from legato.tts.fastspeech2.config import FastSpeech2Config
from legato.tts.fastspeech2.loader import load_fastspeech2
from legato.tts.fastspeech2.model import FastSpeech2
from legato.tts.fastspeech2.symbols import text_to_ids
from legato.tts.text.g2p import G2p, preprocess_english, read_lexicon
from legato.tts.text.limits import bounded_sentences
from legato.tts.text.normalize import normalize_english
from legato.tts.voice import SynthesisError, SynthesisRequest, Voice

CHUNK_FRAMES = 32  # mel frames per vocoder step: 372 ms at 22.05 kHz / hop 256
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def split_sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if any(c.isalnum() for c in s)]


class FastSpeech2Voice(Voice):
    model = "fastspeech2+hifigan"

    def __init__(
        self,
        name: str,
        acoustic: FastSpeech2,
        config: FastSpeech2Config,
        vocoder: HifiGan,
        lexicon: dict[str, list[str]],
        g2p: G2p | None = None,
        speaker: int = 0,
        chunk_frames: int = CHUNK_FRAMES,
    ):
        if vocoder.cfg.hop_length != config.hop_length:
            raise SynthesisError(f"voice {name!r}: vocoder hop {vocoder.cfg.hop_length} != acoustic model hop {config.hop_length}")
        self.name, self.acoustic, self.config, self.vocoder = name, acoustic, config, vocoder
        self.lexicon, self.g2p = lexicon, g2p or G2p()
        self.speaker, self.chunk_frames = speaker, chunk_frames
        self.sample_rate = config.sample_rate
        self.device = next(acoustic.parameters()).device

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any], path: Callable[[str], Path]) -> "FastSpeech2Voice":
        device = spec.get("device", "cpu")
        acoustic, config = load_fastspeech2(path(spec["checkpoint"]), path(spec["config_dir"]), device)
        voc = spec.get("vocoder") or {}
        if "checkpoint" not in voc or "config" not in voc:
            raise SynthesisError(f"voice {name!r}: 'vocoder' needs 'checkpoint' and 'config' (HiFi-GAN generator and its config.json)")
        vocoder = load_hifigan(path(voc["checkpoint"]), path(voc["config"]), device)
        lexicon = read_lexicon(path(spec["lexicon"])) if spec.get("lexicon") else {}
        return cls(name, acoustic, config, vocoder, lexicon, speaker=int(spec.get("speaker", 0)))

    def phonemes(self, sentence: str) -> list[int]:
        return text_to_ids(preprocess_english(sentence, self.lexicon, self.g2p))

    @torch.inference_mode()
    def stream(self, request: SynthesisRequest, cancelled: threading.Event) -> Iterator[torch.Tensor]:
        if request.reference_audio is not None:
            raise SynthesisError(f"voice {self.name!r} does not take reference audio")
        for sentence in bounded_sentences(split_sentences(normalize_english(request.text))):
            if cancelled.is_set():
                return
            ids = torch.tensor([self.phonemes(sentence)], device=self.device)
            if ids.shape[1] == 0:
                continue
            speakers = torch.tensor([self.speaker], device=self.device) if self.config.n_speakers else None
            mel, frames = self.acoustic.synthesize(ids, torch.tensor([ids.shape[1]], device=self.device), speakers, d_control=1.0 / request.speed)
            mel = mel[:, : int(frames[0])].transpose(1, 2)  # (1, n_mels, frames)
            streamer = HifiGanStreamer(self.vocoder)
            for lo in range(0, mel.shape[2], self.chunk_frames):
                if cancelled.is_set():
                    return
                wav = streamer.push(mel[:, :, lo : lo + self.chunk_frames])
                if wav.numel():
                    yield wav[0].float().cpu()
            tail = streamer.flush()
            if tail.numel():
                yield tail[0].float().cpu()
