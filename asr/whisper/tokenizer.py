"""Whisper's tokenizer: byte-level BPE from ``tokenizer.json`` plus special tokens.

Special tokens are looked up by name, so the English-only (51864) and
multilingual (51865/51866) vocabularies both work. Timestamps are the ids from
``<|notimestamps|> + 1`` on, one per 20 ms (``<|0.00|>``, ``<|0.02|>``, ...).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

SECONDS_PER_TIMESTAMP = 0.02  # one timestamp token = 20 ms (two encoder frames)

# Symbols that mark non-speech annotations (speaker tags, music notes, brackets);
# suppressed so the model transcribes only what is said. Same set as OpenAI's.
NON_SPEECH_SYMBOLS = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + (
    "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
)
MISCELLANEOUS_SYMBOLS = set("♩♪♫♬♭♮♯")  # U+2640..U+267F: the first token of their UTF-8 is safe to ban


class WhisperTokenizer:
    def __init__(self, path: str | Path, multilingual: bool = False, language: str = "en", task: str = "transcribe"):
        self.tok = Tokenizer.from_file(str(path))
        self.multilingual = multilingual
        self.language_code, self.task_name = language, task

    def _id(self, name: str) -> int | None:
        return self.tok.token_to_id(name)

    @cached_property
    def eot(self) -> int:
        return self._id("<|endoftext|>")

    @cached_property
    def sot(self) -> int:
        return self._id("<|startoftranscript|>")

    @cached_property
    def sot_prev(self) -> int:
        return self._id("<|startofprev|>")

    @cached_property
    def sot_lm(self) -> int:
        return self._id("<|startoflm|>")

    @cached_property
    def transcribe(self) -> int:
        return self._id("<|transcribe|>")

    @cached_property
    def translate(self) -> int:
        return self._id("<|translate|>")

    @cached_property
    def no_speech(self) -> int:
        return self._id("<|nospeech|>") or self._id("<|nocaptions|>")

    @cached_property
    def no_timestamps(self) -> int:
        return self._id("<|notimestamps|>")

    @cached_property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

    @cached_property
    def sot_sequence(self) -> list[int]:
        """The decoder's task prompt: <|startoftranscript|> (+ language and task when multilingual)."""
        seq = [self.sot]
        if self.multilingual:
            seq += [self._id(f"<|{self.language_code}|>"), self.transcribe if self.task_name == "transcribe" else self.translate]
        return seq

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        """Text of the ordinary tokens (timestamps and other specials dropped)."""
        return self.tok.decode([t for t in tokens if t < self.eot])

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in NON_SPEECH_SYMBOLS + sorted(MISCELLANEOUS_SYMBOLS):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in MISCELLANEOUS_SYMBOLS:
                    result.add(tokens[0])
        return tuple(sorted(result))

    def suppressed_tokens(self, extra: tuple[int, ...] = ()) -> tuple[int, ...]:
        """Tokens never sampled: non-speech symbols and the task/control tokens."""
        ids = set(self.non_speech_tokens) | set(extra)
        ids |= {self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm, self.no_speech}
        return tuple(sorted(i for i in ids if i is not None))

    def timestamp_seconds(self, token: int) -> float:
        return (token - self.timestamp_begin) * SECONDS_PER_TIMESTAMP
