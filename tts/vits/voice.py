"""A Piper VITS voice: text -> Piper's phoneme ids per sentence -> prior -> streamed waveform.

Every request is a generator on the engine's voice stage (``tts/stage.py``) that submits two kinds
of job, and the stage batches each kind across all running requests in one call per step:

- :class:`EncodeJob` (one sentence): text encoder, duration predictor, length regulation and the
  prior sample, for all submitted sentences as one padded batch;
- :class:`DecodeJob` (one frame window of a sentence, ``streaming.py``): flow and decoder for all
  submitted windows as one padded batch.

A request's first window is short (``FIRST_CHUNK_FRAMES``), so its first audio leaves after one
encode and one small decode; later windows, and a later sentence's first, are ``MAX_CHUNK_FRAMES``
(each window boundary re-decodes the decoder's context and, once a sentence, the flow's). While a sentence decodes, the next
sentence's encode is already submitted, due a little before the sentence's audio runs out. Jobs carry
``due`` (when their audio must start playing). A step runs the first of these classes that has jobs:
the jobs of requests with no audio out yet, then jobs due within ``URGENT_S``, then everything
submitted; so a new request's first audio never waits behind other requests' later windows.

Noise (``noise_scale``, ``noise_w``) is drawn from the request's own generator, seeded by the voice's
``seed`` or at random: a seed reproduces the audio whatever batch it runs in. ``speed`` divides the
voice's ``length_scale``. Audio is the model's output, clipped to [-1, 1]; Piper's per-sentence peak
normalisation is not applied, because it needs the whole sentence before the first sample.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from legato.tts.text.limits import check_total
from legato.tts.text.piper_phonemes import PiperText
from legato.tts.voice import Submit, SynthesisError, SynthesisRequest, Voice, Wait

from .loader import PiperVoiceFile, VitsLoadError, load_piper_voice
from .model import Vits
from .streaming import FIRST_CHUNK_FRAMES, MAX_CHUNK_FRAMES, Buckets, SentenceStream, Window, decode_windows

MAX_JOBS = 64  # encode rows or decode windows per batched call
URGENT_S = 0.05  # a job due this soon runs before any job due later; others wait while urgent ones exist
CPU_FRAMES_PER_CALL = 512  # decoder frames a step on the CPU (6 s of audio): then the stage schedules again
MAX_SENTENCE_IDS = 1200  # phoneme ids per encoder row: attention is quadratic in it
MAX_SENTENCE_FRAMES = 4000  # 46 s of audio at 22.05 kHz / hop 256: a sentence's decode work is bounded


@dataclass(eq=False)
class EncodeJob:
    ids: list[int]
    length_scale: float
    noise_scale: float
    noise_w: float
    speaker: int | None
    generator: torch.Generator
    first_window: int  # frames: short for a request's first sentence (first audio soon), long after (less overlap)
    due: float = 0.0
    first_audio: bool = False  # the request has no audio out yet: runs before any other job
    done: bool = False
    result: SentenceStream | None = None


@dataclass(eq=False)
class DecodeJob:
    window: Window
    due: float = 0.0
    first_audio: bool = False
    done: bool = False
    result: torch.Tensor | None = None  # (samples,)


class PiperVoice(Voice):
    model = "piper-vits"
    max_jobs = MAX_JOBS

    def __init__(self, name: str, voice: PiperVoiceFile, *, speaker: int | None = None, seed: int | None = None,
                 first_chunk: int = FIRST_CHUNK_FRAMES, max_chunk: int = MAX_CHUNK_FRAMES):
        self.name, self.file, self.net = name, voice, voice.model
        self.text = PiperText.from_config(voice.voice_json)
        self.space_id = (voice.voice_json["phoneme_id_map"].get(" ") or [None])[0]
        self.sample_rate = voice.config.sample_rate
        self.language = str((voice.voice_json.get("language") or {}).get("code") or voice.voice_json.get("espeak", {}).get("voice", "en"))
        self.device = str(next(self.net.parameters()).device)
        # A GPU runs padded batches whose shapes are rounded up (Buckets); the CPU runs job by job (see step_jobs).
        self.buckets: Buckets | None = Buckets() if self.device != "cpu" else None
        speakers = voice.voice_json.get("speaker_id_map") or {}
        if voice.config.n_speakers > 1:
            speaker = 0 if speaker is None else speaker
            if not 0 <= speaker < voice.config.n_speakers:
                raise SynthesisError(f"voice {name!r}: speaker {speaker} is not in 0..{voice.config.n_speakers - 1} ({', '.join(speakers) or 'unnamed'})")
        else:
            speaker = None
        self.speaker, self.seed = speaker, seed
        self.first_chunk, self.max_chunk = first_chunk, max_chunk

    @classmethod
    def from_files(cls, name: str, model_path: str | Path, json_path: str | Path | None = None, device: str = "cpu", **options: Any) -> "PiperVoice":
        return cls(name, load_piper_voice(model_path, json_path, device), **options)

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any], path: Callable[[str], Path]) -> "PiperVoice":
        """voices.yaml entry: ``model: piper``, ``checkpoint: voice.onnx`` (or ``.ckpt``), optional ``config``
        (default: checkpoint + ``.json``), ``speaker`` (name or id), ``seed``, ``device``."""
        if "checkpoint" not in spec:
            raise SynthesisError(f"voice {name!r}: 'checkpoint' (a Piper .onnx) is required")
        model = path(spec["checkpoint"])
        config = path(spec["config"]) if spec.get("config") else path(str(spec["checkpoint"]) + ".json")
        try:
            loaded = load_piper_voice(model, config, spec.get("device", "cpu"))
        except VitsLoadError as exc:
            raise SynthesisError(f"voice {name!r}: {exc}") from None
        speaker = spec.get("speaker")
        if isinstance(speaker, str) and not speaker.isdigit():
            ids = loaded.voice_json.get("speaker_id_map") or {}
            if speaker not in ids:
                raise SynthesisError(f"voice {name!r}: speaker {speaker!r} is not among {sorted(ids)}")
            speaker = ids[speaker]
        seed = spec.get("seed")
        return cls(name, loaded, speaker=None if speaker is None else int(speaker), seed=None if seed is None else int(seed))

    def sentences(self, text: str) -> list[list[int]]:
        """Phoneme ids per sentence, long sentences cut to ``MAX_SENTENCE_IDS`` at a word boundary; a request whose
        phonemes exceed the normalised-text bound (``tts/text/limits.py``) is refused."""
        out = []
        sentences = self.text.sentences(text)
        check_total(sum((len(ids) - 1) // 2 for ids in sentences), "phonemes")  # ids: BOS, then a pad after each
        for ids in sentences:
            while len(ids) > MAX_SENTENCE_IDS:
                cut = max((i for i in range(MAX_SENTENCE_IDS // 2, MAX_SENTENCE_IDS) if ids[i] == self.space_id), default=MAX_SENTENCE_IDS)
                out.append(ids[:cut] + ids[-1:])  # keep EOS
                ids = ids[:1] + ids[cut:]  # a new BOS
            out.append(ids)
        return out

    @torch.inference_mode()
    def stream(self, request: SynthesisRequest, cancelled: threading.Event) -> Iterator[Any]:
        if request.reference_audio is not None:
            raise SynthesisError(f"voice {self.name!r} does not take reference audio")
        sentences = self.sentences(request.text)
        inf = self.file.inference
        seed = self.seed if self.seed is not None else random.getrandbits(62)
        generator = torch.Generator(device=self.device).manual_seed(seed)  # on the device: draws cost no copy
        start = time.monotonic()
        played = 0.0  # seconds of audio yielded

        def encode(ids: list[int], due: float, first_window: int, first_audio: bool = False) -> EncodeJob:
            return EncodeJob(ids, inf.length_scale / request.speed, inf.noise_scale, inf.noise_w, self.speaker, generator, first_window, due,
                             first_audio=first_audio)

        pending = encode(sentences[0], start, self.first_chunk, first_audio=True) if sentences else None
        if pending is not None:
            yield Submit([pending])
        for k in range(len(sentences)):
            stream: SentenceStream = yield Wait(pending)
            pending = None
            if k + 1 < len(sentences):  # the next sentence encodes while this one decodes, before its audio is due
                sentence_s = stream.frames * stream.hop / self.sample_rate
                pending = encode(sentences[k + 1], start + played + max(0.0, sentence_s - 0.5), self.max_chunk)
                yield Submit([pending])
            while not stream.done:
                if cancelled.is_set():
                    return
                job = DecodeJob(stream.next_window(), due=start + played, first_audio=played == 0)
                yield Submit([job])
                audio: torch.Tensor = yield Wait(job)
                played += audio.shape[0] / self.sample_rate
                yield audio.clamp(-1.0, 1.0)

    def step_jobs(self, jobs: list) -> None:
        """The jobs to run now (the stage sorts them by due): on a GPU one padded encode and one padded decode call
        for all; on the CPU each job alone, up to ``CPU_FRAMES_PER_CALL`` decoder frames a step. The CPU is busy
        with one row already, so a batch saves it nothing and pays for the padding of its shorter rows."""
        soon = time.monotonic() + URGENT_S
        jobs = [j for j in jobs if j.first_audio] or [j for j in jobs if j.due <= soon] or jobs
        encodes = [j for j in jobs if isinstance(j, EncodeJob)]
        decodes = [j for j in jobs if isinstance(j, DecodeJob)]
        if self.buckets is not None:
            if encodes:
                self._encode(encodes)
            if decodes:
                self._decode(decodes)
            return
        for job in encodes:
            self._encode([job])
        frames = 0
        for job in decodes:
            if frames >= CPU_FRAMES_PER_CALL:
                break
            frames += job.window.dec_in[1] - job.window.dec_in[0]
            self._decode([job])

    def _decode(self, jobs: list[DecodeJob]) -> None:
        for job, audio in zip(jobs, decode_windows(self.net, [j.window for j in jobs], self.buckets)):
            job.result, job.done = audio, True

    def _encode(self, jobs: list[EncodeJob]) -> None:
        net: Vits = self.net
        dev = next(net.parameters()).device
        n, width = len(jobs), max(len(j.ids) for j in jobs)
        if self.buckets is not None:  # rows past n: one pad id each, their results dropped
            n, width = self.buckets.rows(n), self.buckets.width(width)
        lengths = torch.tensor([len(j.ids) for j in jobs] + [1] * (n - len(jobs)))
        ids = torch.zeros(n, width, dtype=torch.long)
        noise = torch.zeros(n, 2, width, device=dev)
        for r, j in enumerate(jobs):
            ids[r, : len(j.ids)] = torch.tensor(j.ids)
            if net.cfg.use_sdp and j.noise_w:
                noise[r, :, : len(j.ids)] = torch.randn(2, len(j.ids), generator=j.generator, device=dev) * j.noise_w

        def prior_noise(r: int, frames: int) -> torch.Tensor:
            if r >= len(jobs) or not jobs[r].noise_scale:
                return torch.zeros(net.cfg.inter_channels, frames, device=dev)
            return torch.randn(net.cfg.inter_channels, frames, generator=jobs[r].generator, device=dev)

        pad = [jobs[0]] * (n - len(jobs))
        encoded = net.encode(
            ids.to(dev), lengths.to(dev), length_scales=torch.tensor([j.length_scale for j in jobs + pad], device=dev),
            duration_noise=noise, prior_noise=prior_noise, noise_scales=torch.tensor([j.noise_scale for j in jobs + pad], device=dev),
            speaker_ids=None if jobs[0].speaker is None else torch.tensor([j.speaker for j in jobs + pad], device=dev),
        )
        for job, e in zip(jobs, encoded):
            z_p = e.z_p[:, :MAX_SENTENCE_FRAMES]
            job.result = SentenceStream(net, z_p, e.g, job.first_window, self.max_chunk)
            job.done = True
