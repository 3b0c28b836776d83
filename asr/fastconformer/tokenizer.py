"""NeMo's SentencePiece tokenizer (``tokenizer.type: bpe``): ids <-> text.

Ids are the SentencePiece model's own; the ASR blank is ``vocab_size``, one
past the last piece, and never reaches the tokenizer.
"""

from __future__ import annotations

import sentencepiece


class SentencePieceTokenizer:
    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto  # kept: another process builds the same tokenizer from it
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode_ids([int(i) for i in ids])

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def encode(self, text: str) -> list[int]:
        return self.sp.encode_as_ids(text)
