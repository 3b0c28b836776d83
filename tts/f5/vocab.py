"""F5-TTS's symbol vocabulary: ``vocab.txt``, one symbol per line, line number = id.

The official Emilia vocabulary (2545 lines) holds characters and pinyin syllables with tones ("ni3");
the text front-end turns text into that symbol sequence. Line 0 must be the space: F5-TTS maps unknown
symbols to id 0. Batches pad with -1, which the model turns into its filler row 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch

PAD_ID = -1


class VocabError(ValueError):
    """A vocab.txt legato cannot use."""


@dataclass(frozen=True)
class Vocab:
    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.symbols or self.symbols[0] != " ":
            raise VocabError("vocab line 0 must be a single space (F5-TTS uses id 0 for space and unknown symbols)")

    @classmethod
    def from_file(cls, path: str | Path) -> "Vocab":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VocabError(f"cannot read vocab {path}: {exc}") from exc
        # F5-TTS drops the last character of every line (the newline); a missing final newline would
        # cost it a character, we keep it. Duplicate lines keep the later id, as its dict does.
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls(tuple(lines))

    def __len__(self) -> int:
        return len(self.symbols)

    @cached_property
    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    def encode(self, symbols: Sequence[str]) -> list[int]:
        """Symbols (characters, or pinyin syllables from the front-end) -> ids; unknown -> 0."""
        index = self.index
        return [index.get(s, 0) for s in symbols]

    def batch(self, texts: Sequence[Sequence[str]]) -> torch.Tensor:
        """Several symbol sequences -> (B, N) int64, padded with -1."""
        ids = [self.encode(t) for t in texts]
        out = torch.full((len(ids), max((len(i) for i in ids), default=0)), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out
