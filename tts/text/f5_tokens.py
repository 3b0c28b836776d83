"""F5-TTS text tokens: f5_tts/model/utils.py's `convert_char_to_pinyin` and `list_str_to_idx`, without torch.

F5-TTS reads text as characters, except Chinese characters, which become tone-numbered pinyin syllables
("你好" -> " ni3", " hao3"); ids come from the checkpoint's vocab.txt (one token a line, line number = id, " " is 0,
and 0 is also every unknown token). Word segmentation decides pinyin context (polyphones, tone sandhi) and where a
space is inserted between ASCII words, so we call the same segmenter as f5-tts: rjieba (f5-tts >= 1.1.20; older
releases used jieba, which we fall back to). Segmenter and pypinyin are imported on first use; both ship their
dictionaries and work offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

Segmenter = Callable[[str], Iterable[str]]

# f5-tts maps these before segmenting, "to address OOV" in its vocabularies.
_CUSTOM_TRANS = str.maketrans({";": ",", "\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


def is_chinese(c: str) -> bool:
    # f5-tts's range: bopomofo to the end of the CJK unified ideographs block.
    return "\u3100" <= c <= "\u9fff"


def default_segmenter() -> Segmenter:
    try:
        import rjieba
        return rjieba.cut
    except ImportError:
        import jieba
        return jieba.cut


def _pinyin(text: str) -> list[str]:
    from pypinyin import Style, lazy_pinyin
    return lazy_pinyin(text, style=Style.TONE3, tone_sandhi=True)


def convert_char_to_pinyin(text: str, polyphone: bool = True, segment: Segmenter | None = None) -> list[str]:
    """One text -> its F5-TTS tokens: "Hi,你好" -> ['H', 'i', ',', ' ', 'ni3', ' ', 'hao3'].

    f5-tts's function takes and returns lists of texts; this takes one.
    """
    segment = segment or default_segmenter()
    tokens: list[str] = []
    for seg in segment(text.translate(_CUSTOM_TRANS)):
        n_bytes = len(seg.encode("utf-8"))
        if n_bytes == len(seg):  # ASCII letters and symbols: characters, a space before a word after punctuation
            if tokens and n_bytes > 1 and tokens[-1] not in " :'\"":
                tokens.append(" ")
            tokens.extend(seg)
        elif polyphone and n_bytes == 3 * len(seg):  # all East Asian: pinyin of the whole word, for context
            syllables = _pinyin(seg)
            for i, c in enumerate(seg):
                if is_chinese(c):
                    tokens.append(" ")
                tokens.append(syllables[i])
        else:  # mixed: character by character
            for c in seg:
                if ord(c) < 256:
                    tokens.append(c)
                elif is_chinese(c):
                    tokens.append(" ")
                    tokens.extend(_pinyin(c))
                else:
                    tokens.append(c)
    return tokens


def read_vocab(path: str | Path) -> dict[str, int]:
    """vocab.txt -> {token: id}: the line number, the trailing newline cut (so " " is a token)."""
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line[:-1]] = i  # f5-tts cuts the last character whatever it is; a last line without "\n" too
    return vocab


def tokens_to_ids(tokens: Sequence[str], vocab: dict[str, int]) -> list[int]:
    """`list_str_to_idx` for one text, before padding: unknown tokens are 0 (the space)."""
    return [vocab.get(t, 0) for t in tokens]


def text_to_ids(text: str, vocab: dict[str, int], segment: Segmenter | None = None) -> list[int]:
    return tokens_to_ids(convert_char_to_pinyin(text, segment=segment), vocab)
