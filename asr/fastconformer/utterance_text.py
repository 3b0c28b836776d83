"""A FastConformer stream's current utterance: tokens in, partial and final ``TextEvent``s out, for both serving
paths: the engine's ``FastConformerStage`` adds each step's tokens and asks for events once a batch; the bulk path's
worker only hands over what each step decoded (new tokens and their encoder frames, and whether the
utterance ended: endpoint or end of stream); turning tokens into words and events is this object's, on whichever
thread or process consumes them. Building words costs ~11 us per stream with new tokens per step (SentencePiece
pieces and decoding): at 10,000 such streams a step, 110 ms, more than the GPU step itself, so it must not run
on the stepping thread: in one process a text thread does it while the GPU computes the next step; with
``--frontends`` each front-end process does it for its own streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from legato.asr.fastconformer.tokenizer import SentencePieceTokenizer
from legato.asr.fastconformer.words import WordBuilder
from legato.asr.utterance_events import utterance_events
from legato.stream.frames import TextEvent, TextKind


@dataclass
class UtteranceText:
    """The current utterance of one stream (tokens only grow until a final starts the next)."""

    interim: bool
    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # encoder frame of each token, from the stream's start
    words: WordBuilder = field(default_factory=WordBuilder)
    last_partial: str = ""

    def add(self, tokens: list[int], frames: list[int]) -> None:
        self.tokens += tokens
        self.frames += frames

    def events(self, tokenizer: SentencePieceTokenizer, frame_s: float, final: bool) -> list[TextEvent]:
        """The utterance's partial if its text changed, or its final when ``final`` (then a new utterance starts)."""
        if not self.tokens:
            return []

        def make(kind: TextKind) -> TextEvent | None:
            words = self.words.words(tokenizer, self.tokens, self.frames, frame_s)
            if not words:
                return None
            return TextEvent(kind, " ".join(w.word for w in words), words[0].start_s, words[-1].end_s,
                             tuple(words) if kind is TextKind.FINAL else ())

        events = utterance_events(self, final, make)
        if final:
            self.tokens, self.frames, self.words = [], [], WordBuilder()
        return events

    def update(self, tokenizer: SentencePieceTokenizer, frame_s: float, tokens: list[int], frames: list[int],
               final: bool) -> list[TextEvent]:
        """``add`` a step's new tokens, then its ``events``."""
        self.add(tokens, frames)
        return self.events(tokenizer, frame_s, final)
