"""Two-pass Paraformer serving, as FunASR's ``2pass`` mode: streaming partials, offline finals per utterance.

Per stream, every 600 ms piece goes to

* the streaming model (``ParaformerStage`` inside, without its own endpointing): partial text of the current
  utterance as it is spoken;
* Silero VAD: an utterance starts at the first speech frame (with ``PREROLL_MS`` of audio before it) and ends
  after ``min_silence_ms`` of silence, or at ``MAX_UTTERANCE_S``, or at the end of the stream.

At each utterance end the offline model decodes the utterance's audio with full context (all streams whose
utterances end in the same step are one padded batch, each row decoded as if alone) and that text is the
final; the streaming model's caches are then reset, as FunASR's server resets its online cache at a VAD end.
Without a streaming model (an offline folder served live) there are no partials, only the finals.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from legato.asr.paraformer.recognizer import ParaformerRecognizer
from legato.asr.paraformer.stage import ParaformerStage
from legato.asr.silero_vad import FRAME_SAMPLES, Endpointer, SileroVad, VadState
from legato.stream.audio_io import to_mono
from legato.stream.errors import SampleRateError
from legato.stream.frames import AudioChunk, EndOfStream, Frame, TextEvent, TextKind
from legato.stream.graph import BatchItem, Stage, StreamInfo

PREROLL_MS = 300  # audio kept before the first speech frame of an utterance
MAX_UTTERANCE_S = 30.0  # an utterance this long is finalised even without a pause
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class TwoPassModels:
    """What ``paraformer-2pass:ONLINE,OFFLINE`` loads: the streaming folder for partials, the offline one for finals."""

    online: ParaformerRecognizer
    offline: ParaformerRecognizer
    name: str
    sample_rate: int = SAMPLE_RATE


@dataclass
class _TwoPassContext:
    info: StreamInfo
    online: object | None  # the inner ParaformerStage's context
    vad: VadState
    endpointer: Endpointer
    audio: list[torch.Tensor] = field(default_factory=list)  # since ``start`` (the utterance, or the pre-roll)
    start: int = 0  # stream sample where ``audio`` begins
    seen: int = 0  # samples received
    vad_frames: int = 0  # VAD frames scored
    speech_from: int | None = None  # stream sample of the current utterance's start
    online_from: int = 0  # stream sample where the streaming model's current caches began


class TwoPassStage(Stage):
    def __init__(self, offline: ParaformerRecognizer, online: ParaformerRecognizer | None = None, *, capacity: int = 256,
                 max_batch: int = 64, name: str = "paraformer_2pass", vad: SileroVad | None = None):
        if offline.streaming:
            raise ValueError(f"{offline.name}: the final pass needs an offline Paraformer folder, not a streaming one")
        self.offline, self.name, self.max_batch = offline, name, max_batch
        self.online = ParaformerStage(online, capacity=capacity, max_batch=max_batch, name=f"{name}/online") if online else None
        self.device = str(offline.device)
        self.vad = vad or SileroVad()
        self.piece_samples = online.chunk_samples if online else offline.chunk_samples

    def _online_open(self, info: StreamInfo):
        if self.online is None:
            return None
        opts = {**info.options, "endpointing": {"enabled": False}}
        return self.online.open(StreamInfo(info.stream_id, info.budget_s, opts))

    def open(self, stream: StreamInfo) -> _TwoPassContext:
        ep = stream.options.get("endpointing", {})
        ep = {} if isinstance(ep, bool) else ep  # the final pass needs utterances: VAD is always on here
        endpointer = Endpointer(float(ep.get("threshold", 0.5)), int(ep.get("min_silence_ms", 500)))
        return _TwoPassContext(stream, self._online_open(stream), self.vad.init_state(1), endpointer)

    def close(self, ctx: _TwoPassContext) -> None:
        if ctx.online is not None:
            self.online.close(ctx.online)

    # -- per stream ---------------------------------------------------------------------------

    def _listen(self, ctx: _TwoPassContext, audio: torch.Tensor) -> list[tuple[int, int]]:
        """Feed the VAD; returns the utterances (start, end sample) this audio completes."""
        ctx.audio.append(audio)
        ctx.seen += audio.shape[0]
        done = []
        for p in self.vad.step(audio[None], ctx.vad)[0].tolist():
            at = ctx.vad_frames * FRAME_SAMPLES
            ctx.vad_frames += 1
            for event in ctx.endpointer.update([p]):
                if event == "start":
                    ctx.speech_from = max(ctx.start, at - PREROLL_MS * SAMPLE_RATE // 1000)
                elif event == "end" and ctx.speech_from is not None:
                    done.append((ctx.speech_from, at + FRAME_SAMPLES))
                    ctx.speech_from = None
        if ctx.speech_from is not None and ctx.seen - ctx.speech_from >= MAX_UTTERANCE_S * SAMPLE_RATE:
            done.append((ctx.speech_from, ctx.seen))
            ctx.speech_from = ctx.seen
        return done

    def _cut(self, ctx: _TwoPassContext, start: int, end: int) -> torch.Tensor:
        whole = torch.cat(ctx.audio) if ctx.audio else torch.zeros(0)
        return whole[start - ctx.start : end - ctx.start]

    def _trim(self, ctx: _TwoPassContext) -> None:
        """Keep only what a coming utterance may need: from its start, or the pre-roll."""
        keep_from = ctx.speech_from if ctx.speech_from is not None else max(0, ctx.seen - PREROLL_MS * SAMPLE_RATE // 1000)
        if keep_from > ctx.start:
            ctx.audio, ctx.start = [self._cut(ctx, keep_from, ctx.seen)], keep_from

    @torch.inference_mode()
    def _finals(self, jobs: list[tuple[int, int, int, torch.Tensor]]) -> dict[int, list[TextEvent]]:
        """Offline pass over the utterances of many streams as one padded batch."""
        out: dict[int, list[TextEvent]] = {}
        jobs = [j for j in jobs if j[3].shape[0] >= FRAME_SAMPLES]
        if not jobs:
            return out
        rec = self.offline
        feats = [rec.frontend(a.to(rec.device)[None])[0] for *_, a in jobs]
        lengths = torch.tensor([f.shape[0] for f in feats], device=rec.device)
        result = rec.model(torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths)
        for (i, start, end, _), ids in zip(jobs, result.ids):
            text = rec.text(ids)
            if text:
                out.setdefault(i, []).append(TextEvent(TextKind.FINAL, text, start / SAMPLE_RATE, end / SAMPLE_RATE))
        return out

    def process(self, batch: Sequence[BatchItem]) -> list[list[Frame] | Exception]:
        out: list[list[Frame] | Exception] = [[] for _ in batch]
        partials: list[list[Frame] | Exception] = [[] for _ in batch]
        if self.online is not None:
            live = [i for i, (_, f) in enumerate(batch) if isinstance(f, (AudioChunk, EndOfStream))]
            for i, res in zip(live, self.online.process([(batch[i][0].online, batch[i][1]) for i in live])):
                partials[i] = res
        jobs: list[tuple[int, int, int, torch.Tensor]] = []
        for i, (ctx, frame) in enumerate(batch):
            if isinstance(partials[i], Exception):
                out[i] = partials[i]
                continue
            try:
                if isinstance(frame, AudioChunk):
                    if frame.sample_rate != SAMPLE_RATE:
                        raise SampleRateError(f"{self.name} needs {SAMPLE_RATE} Hz audio, got {frame.sample_rate} Hz (resample first)")
                    for start, end in self._listen(ctx, to_mono(frame.samples)[:, 0]):
                        jobs.append((i, start, end, self._cut(ctx, start, end)))
                    self._trim(ctx)
                    shift = ctx.online_from / SAMPLE_RATE  # the inner stage counts from its last reset
                    out[i] = [replace(f, start_s=f.start_s + shift, end_s=f.end_s + shift) for f in partials[i]
                              if isinstance(f, TextEvent) and f.kind is TextKind.PARTIAL]
                elif isinstance(frame, EndOfStream):
                    if ctx.speech_from is not None:
                        jobs.append((i, ctx.speech_from, ctx.seen, self._cut(ctx, ctx.speech_from, ctx.seen)))
                        ctx.speech_from = None
                else:
                    out[i] = [frame]
            except Exception as exc:  # this stream fails alone
                out[i] = exc
        finals = self._finals([j for j in jobs if not isinstance(out[j[0]], Exception)])
        for i in dict.fromkeys(j[0] for j in jobs):
            if isinstance(out[i], Exception):
                continue
            out[i] = [e for e in out[i] if not (isinstance(e, TextEvent) and e.kind is TextKind.PARTIAL)] + finals.get(i, [])
            ctx = batch[i][0]
            if ctx.online is not None and not isinstance(batch[i][1], EndOfStream):  # a new utterance: fresh online caches
                self.online.close(ctx.online)
                ctx.online, ctx.online_from = self._online_open(ctx.info), ctx.seen
        for i, (_, frame) in enumerate(batch):
            if isinstance(frame, EndOfStream) and not isinstance(out[i], Exception):
                out[i] = list(out[i]) + [frame]
        return out
