"""Token ids stamped with encoder frames -> words with times, and segments split at pauses.

SentencePiece marks a word's first piece with U+2581; a word runs from its
first piece's frame to one frame past its last piece's.
"""

from __future__ import annotations

from legato.asr.fastconformer.tokenizer import SentencePieceTokenizer
from legato.stream.frames import WordTiming

WORD_START = "\u2581"


def words_from_tokens(tokenizer: SentencePieceTokenizer, tokens: list[int], frames: list[int], frame_s: float) -> list[WordTiming]:
    words: list[WordTiming] = []
    group: list[int] = []
    first = last = 0
    for tok, fr, piece in zip(tokens, frames, tokenizer.pieces(tokens)):
        if piece.startswith(WORD_START) and group:
            words.append(WordTiming(tokenizer.decode(group).strip(), first * frame_s, (last + 1) * frame_s))
            group = []
        if not group:
            first = fr
        group.append(tok)
        last = fr
    if group:
        words.append(WordTiming(tokenizer.decode(group).strip(), first * frame_s, (last + 1) * frame_s))
    return [w for w in words if w.word]


class WordBuilder:
    """``words_from_tokens`` of a growing token list, paying only for the new tokens and the open last word.

    A word is closed once the next word's first piece arrives, so closed words are kept and each call decodes
    the open word alone: a partial per step over a long utterance costs the same at its start and at its end.
    One builder per utterance (the tokens only grow); a shorter list than the last call's starts over."""

    def __init__(self) -> None:
        self.closed: list[WordTiming] = []
        self.open_from = 0  # first token of the open word
        self.scanned = 0  # tokens whose pieces were looked at

    def words(self, tokenizer: SentencePieceTokenizer, tokens: list[int], frames: list[int], frame_s: float) -> list[WordTiming]:
        if len(tokens) < self.scanned:
            self.__init__()
        for j, piece in enumerate(tokenizer.pieces(tokens[self.scanned:]), start=self.scanned):
            if piece.startswith(WORD_START) and j > self.open_from:
                self.closed += words_from_tokens(tokenizer, tokens[self.open_from:j], frames[self.open_from:j], frame_s)
                self.open_from = j
        self.scanned = len(tokens)
        return self.closed + words_from_tokens(tokenizer, tokens[self.open_from:], frames[self.open_from:], frame_s)


def split_at_pauses(words: list[WordTiming], min_pause_s: float) -> list[list[WordTiming]]:
    """Consecutive words whose gap is shorter than ``min_pause_s`` stay in one segment."""
    segments: list[list[WordTiming]] = []
    for w in words:
        if segments and w.start_s - segments[-1][-1].end_s < min_pause_s:
            segments[-1].append(w)
        else:
            segments.append([w])
    return segments
