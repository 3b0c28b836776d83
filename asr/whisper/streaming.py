"""Streaming an encoder-decoder model: re-decode a growing buffer, commit what two passes agree on.

The local-agreement policy (as in Macháček et al., "Turning Whisper into
Real-Time Transcription System", 2023):

* audio accumulates in a buffer; every ``update_interval_s`` of new audio the
  whole buffer is transcribed again, prompted with the committed text that
  lies before the buffer;
* words already committed are dropped from the new hypothesis (by position:
  the buffer's committed words lead every hypothesis of it);
* the longest prefix on which this hypothesis and the previous one agree is
  committed (``final``); the rest is reported as ``partial``;
* once the buffer is longer than ``max_buffer_s``, it is cut at the end of the
  last fully committed segment, so memory and compute stay bounded however
  long the stream runs;
* ``flush`` (end of stream) and ``endpoint`` (VAD silence) end the utterance:
  its final comes from one pass over the utterance's whole audio (what offline
  transcription of it gives), and everything starts afresh. While the
  utterance runs, the agreed words and the rest are reported as one partial.
  (``utterance_finals=False``: agreed words are committed as finals at once,
  and the end commits the last hypothesis of the buffer.)

Finals' word times come from the final pass by cross-attention DTW (``word_timing.py``) where the model has
alignment heads; partials' word times, and finals' without heads, are the segment's time span shared out in
proportion to word length (an estimate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from legato.asr.whisper.transcribe import Segment
from legato.stream.frames import TextEvent, TextKind, WordTiming

SAMPLE_RATE = 16000

Recognise = Callable[[torch.Tensor, list[int]], list[Segment]]  # (audio (n,), prompt tokens) -> segments


@dataclass(frozen=True)
class StreamingConfig:
    update_interval_s: float = 1.0  # re-decode after this much new audio
    max_buffer_s: float = 15.0  # trim at a committed segment end once the buffer is longer
    prompt_chars: int = 200  # committed text (before the buffer) used as the decoder prompt
    interim_results: bool = True
    # Finals from one pass over the whole utterance when it ends (VAD endpoint, end of stream): the offline
    # transcript of that audio. Local agreement then only drives the partials. False: local agreement commits
    # finals as two passes agree (sooner, but from less context: an utterance's first words can differ).
    utterance_finals: bool = True
    # An utterance longer than this is ended where it reaches it (the stage cuts there), so its final pass is one
    # Whisper window and batches with other streams'; continuous speech without a 0.5 s pause rarely lasts so long.
    max_utterance_s: float = 29.0
    # Text that guides the decoder (OpenAI's ``prompt``: spellings, names, style): put before the committed words in
    # every decoder prompt, of this stream's every utterance.
    prompt: str = ""


def normalise(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def segment_words(seg: Segment, offset_s: float) -> list[WordTiming]:
    """Split a segment into words; share its time span out by word length."""
    words = seg.text.split()
    if not words:
        return []
    total = sum(len(w) for w in words)
    span = max(seg.end_s - seg.start_s, 0.0)
    out, t = [], offset_s + seg.start_s
    for w in words:
        d = span * len(w) / total
        out.append(WordTiming(w, t, t + d))
        t += d
    return out


@dataclass
class _Hypothesis:
    words: list[WordTiming]  # every word heard in the buffer
    boundaries: list[tuple[int, float]]  # (words before the segment end, segment end in buffer seconds)


@dataclass
class LocalAgreement:
    """One stream's streaming transcription state and policy.

    Alignment is by position: the first ``in_buffer`` words of a hypothesis of
    the buffer are the ones already committed from it (allowing for a word
    split or merged differently this time: the committed tail word is looked
    for a couple of positions either side).
    """

    recognise: Recognise
    encode_prompt: Callable[[str], list[int]]
    config: StreamingConfig = field(default_factory=StreamingConfig)

    def __post_init__(self) -> None:
        self.committed: list[WordTiming] = []
        self.pending: list[WordTiming] = []
        self._buffer = torch.zeros(0)
        self._incoming = torch.zeros(0)  # audio taken but not yet in the buffer: it is past the next update point
        self.buffer_start_s = 0.0
        self.in_buffer = 0  # committed words that the buffer's audio still holds
        self.context_start = 0  # committed words before this index belong to an ended utterance
        self._since_update = 0
        self.samples_seen = 0
        self._utterance: list[torch.Tensor] = []  # the utterance's audio that reached the buffer, for its final pass
        self.utterance_from = 0  # index in committed of the utterance's first word (its words are provisional)
        self.utterance_start = 0  # the stream sample where the running utterance began

    @property
    def utterance_samples(self) -> int:
        """Samples of the running utterance taken so far (held ones included)."""
        return self.samples_seen - self.utterance_start

    @property
    def buffer_s(self) -> float:
        return self._buffer.shape[0] / SAMPLE_RATE

    def push(self, audio: torch.Tensor) -> list[TextEvent]:
        """(n,) float32 16 kHz -> events (finals for newly committed words, then a partial)."""
        events, due = [], self.feed(audio)
        while due:
            events += self.update(self.recognise(*self.request()), final=False)
            due = self.advance()
        return events

    def feed(self, audio: torch.Tensor) -> bool:
        """Take audio; True when an update is due (the caller may batch updates of many streams:
        ``request()`` gives the recogniser's input, ``update(segments)`` applies its output, and ``advance()`` says
        whether audio held back makes another one due).

        Updates happen at fixed points of the stream, every ``update_interval_s`` of audio, however the audio is cut
        into chunks: the buffer takes audio up to the next point and holds the rest back. So what is decoded, and
        therefore the transcript, does not depend on the client's message sizes or on how the engine joined them."""
        self.hold(audio)
        return self.advance()

    def hold(self, audio: torch.Tensor) -> None:
        """Take audio without checking for an update (it counts at the next ``feed`` or ``advance``)."""
        self._incoming = torch.cat([self._incoming, audio])
        self.samples_seen += audio.shape[0]

    def advance(self) -> bool:
        """Move held audio into the buffer up to the next update point; True when the buffer reaches it."""
        interval = round(self.config.update_interval_s * SAMPLE_RATE)
        take = self._incoming[: interval - self._since_update]
        self._buffer = torch.cat([self._buffer, take])
        self._utterance.append(take)
        self._incoming = self._incoming[take.shape[0] :]
        self._since_update += take.shape[0]
        if self._since_update < interval:
            return False
        self._since_update = 0
        # With utterance finals, updates only make partials: a stream that wants none (interim_results off, as an
        # uploaded file's) decodes each utterance once, at its end
        return self.config.interim_results or not self.config.utterance_finals

    def request(self) -> tuple[torch.Tensor, list[int]]:
        """(buffer audio, prompt tokens) to recognise for the next update."""
        return self._buffer, self._prompt()

    def final_request(self) -> tuple[torch.Tensor, list[int]] | None:
        """The utterance's end: the input of its final pass (its whole audio and the prompt before it; with
        ``utterance_finals`` off, the buffer's), or None when there is no audio. ``finish`` applies the result."""
        self._buffer = torch.cat([self._buffer, self._incoming])
        self._utterance.append(self._incoming)
        self._incoming = torch.zeros(0)
        if not self.config.utterance_finals:
            return self.request() if self._buffer.numel() else None
        audio = torch.cat(self._utterance)
        if not audio.numel():
            return None
        return audio, self._context_prompt(self.committed[self.context_start : self.utterance_from])

    def finish(self, segments: list[Segment], endpoint: bool = False) -> list[TextEvent]:
        """Apply the final pass of ``final_request`` (``[]`` when it was None): the utterance's final, then a fresh
        start; after an ``endpoint`` the next utterance is not prompted with this one."""
        if not self.config.utterance_finals:
            events = self.update(segments, final=True) if segments else []
        else:
            words: list[WordTiming] = []
            offset = self.utterance_start / SAMPLE_RATE
            for seg in segments:  # timed by DTW when the pass did (word_timing.py), else shared out over the segment
                words += [WordTiming(w.word, w.start_s + offset, w.end_s + offset) for w in seg.words] or segment_words(seg, offset)
            del self.committed[self.utterance_from :]  # the agreed words were provisional: the pass decides
            words = self._monotonic(words)
            self.committed += words
            events = [_event(TextKind.FINAL, words)] if words else []
        self.buffer_start_s += self.buffer_s
        self._buffer, self._utterance = torch.zeros(0), []
        self.pending, self.in_buffer, self._since_update = [], 0, 0
        self.utterance_from, self.utterance_start = len(self.committed), self.samples_seen
        if endpoint:
            self.context_start = len(self.committed)
        return events

    def flush(self) -> list[TextEvent]:
        """End of stream: the utterance's final."""
        return self._end_utterance(endpoint=False)

    def endpoint(self) -> list[TextEvent]:
        """End of an utterance (VAD): its final; the next utterance is not prompted with it."""
        return self._end_utterance(endpoint=True)

    def _end_utterance(self, endpoint: bool) -> list[TextEvent]:
        req = self.final_request()
        return self.finish(self.recognise(*req) if req is not None else [], endpoint)

    def _prompt(self) -> list[int]:
        return self._context_prompt(self.committed[self.context_start : len(self.committed) - self.in_buffer])

    def _context_prompt(self, before: list[WordTiming]) -> list[int]:
        """Prompt tokens of the words said before the audio to decode (their last ``prompt_chars``)."""
        text = " ".join([self.config.prompt] + [w.word for w in before])[-self.config.prompt_chars :].strip()
        return self.encode_prompt(" " + text) if text else []

    def _hypothesis(self, segments: list[Segment]) -> _Hypothesis:
        words: list[WordTiming] = []
        boundaries = []
        for seg in segments:
            words += segment_words(seg, self.buffer_start_s)
            boundaries.append((len(words), seg.end_s))
        return _Hypothesis(words, boundaries)

    def _skip(self, words: list[WordTiming]) -> int:
        """How many leading hypothesis words are the committed ones."""
        k = self.in_buffer
        if k == 0:
            return 0
        last = normalise(self.committed[-1].word)
        for j in sorted(range(max(1, k - 2), min(len(words), k + 2) + 1), key=lambda j: abs(j - k)):
            if normalise(words[j - 1].word) == last:
                return j
        return min(k, len(words))

    def update(self, segments: list[Segment], final: bool = False) -> list[TextEvent]:
        """Apply a recognition of ``request()``: commit what agrees, report the rest as partial."""
        hyp = self._hypothesis(segments)
        skip = self._skip(hyp.words)
        fresh = hyp.words[skip:]
        if final:
            agreed = fresh
        else:
            agreed = []
            for old, new in zip(self.pending, fresh):
                if normalise(old.word) != normalise(new.word):
                    break
                agreed.append(new)
        self.pending = fresh[len(agreed) :]
        agreed = self._monotonic(agreed)
        self.committed += agreed
        self.in_buffer = skip + len(agreed)
        events: list[TextEvent] = []
        if not self.config.utterance_finals or final:
            if agreed:
                events.append(_event(TextKind.FINAL, agreed))
            if self.config.interim_results and self.pending and not final:
                events.append(_event(TextKind.PARTIAL, self.pending))
        elif self.config.interim_results and (agreed or self.pending):  # the utterance so far: agreed words and the rest
            events.append(_event(TextKind.PARTIAL, self.committed[self.utterance_from :] + self.pending))
        if not final:
            self._trim(hyp)
        return events

    def _monotonic(self, words: list[WordTiming]) -> list[WordTiming]:
        """Committed times never go back: each hypothesis estimates word times afresh."""
        floor = self.committed[-1].end_s if self.committed else 0.0
        out = []
        for w in words:
            start = max(w.start_s, floor)
            floor = max(w.end_s, start)
            out.append(WordTiming(w.word, start, floor))
        return out

    def _trim(self, hyp: _Hypothesis) -> None:
        """Cut the buffer at the end of the last segment whose words are all committed."""
        if self.buffer_s <= self.config.max_buffer_s:
            return
        done = [(n, end) for n, end in hyp.boundaries if 0 < n <= self.in_buffer]
        if not done:
            return
        n, end_s = done[-1]
        cut = min(int(round(end_s * SAMPLE_RATE)), self._buffer.shape[0])
        self._buffer = self._buffer[cut:]
        self.buffer_start_s += cut / SAMPLE_RATE
        self.in_buffer -= n


def _event(kind: TextKind, words: list[WordTiming]) -> TextEvent:
    return TextEvent(kind, " ".join(w.word for w in words), words[0].start_s, words[-1].end_s, tuple(words))
