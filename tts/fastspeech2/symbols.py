"""ming024/FastSpeech2's symbol table (text/symbols.py) and its phones -> ids mapping.

The table is keithito/tacotron's with ARPAbet, pinyin and silence phones prefixed by ``@``;
its order fixes the embedding rows of every ming024 checkpoint (ids are positions, 0 is the
pad). ming024's synthesize.py turns words into phones with a lexicon + g2p_en, maps every
punctuation token to ``sp``, and feeds ``"{HH AH0 L OW1 sp ...}"`` to ``text_to_sequence``;
:func:`text_to_ids` is that function for text whose parts outside braces are punctuation and
spaces only, and :func:`phones_to_ids` maps a list of tokens one to one.

Differences from ming024, on purpose: an unknown phone raises ``ValueError`` (ming024 drops
it silently), and words outside braces are refused (ming024 would spell them with letter
symbols after its English cleaners; legato's G2P gives phones instead).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PAD = "_"
_SPECIAL = "-"
_PUNCTUATION = "!'(),.:;? "
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# text/cmudict.py valid_symbols: vowels bare and with stress 0/1/2, consonants bare.
_ARPABET = (
    "AA AA0 AA1 AA2 AE AE0 AE1 AE2 AH AH0 AH1 AH2 AO AO0 AO1 AO2 AW AW0 AW1 AW2 AY AY0 AY1 AY2 B CH D DH "
    "EH EH0 EH1 EH2 ER ER0 ER1 ER2 EY EY0 EY1 EY2 F G HH IH IH0 IH1 IH2 IY IY0 IY1 IY2 JH K L M N NG "
    "OW OW0 OW1 OW2 OY OY0 OY1 OY2 P R S SH T TH UH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
).split()  # noqa: SIM905
# text/pinyin.py valid_symbols = initials + finals (each with tones 1..5) + ["rr"].
_PINYIN_INITIALS = "b c ch d f g h j k l m n p q r s sh t w x y z zh".split()  # noqa: SIM905
_PINYIN_FINALS = (
    "a ai an ang ao e ei en eng er i ia ian iang iao ie ii iii in ing iong iou o ong ou u ua uai uan uang "
    "uei uen uo v van ve vn"
).split()  # noqa: SIM905
_PINYIN = _PINYIN_INITIALS + [f"{f}{tone}" for f in _PINYIN_FINALS for tone in range(1, 6)] + ["rr"]
SILENCES = ("sp", "spn", "sil")  # short pause, spoken noise, silence (MFA labels)

SYMBOLS: tuple[str, ...] = tuple(
    [_PAD]
    + list(_SPECIAL)
    + list(_PUNCTUATION)
    + list(_LETTERS)
    + ["@" + s for s in _ARPABET]
    + ["@" + s for s in _PINYIN]
    + ["@" + s for s in SILENCES]
)
N_SYMBOLS = len(SYMBOLS)  # 360; the encoder embedding has N_SYMBOLS + 1 rows
PAD_ID = 0
SYMBOL_TO_ID: dict[str, int] = {s: i for i, s in enumerate(SYMBOLS)}
PUNCTUATION = _SPECIAL + _PUNCTUATION  # symbols usable as themselves, outside braces

_CURLY = re.compile(r"(.*?)\{(.+?)\}(.*)", re.DOTALL)  # ming024's _curly_re (plus DOTALL)
_WHITESPACE = re.compile(r"\s+")


def phone_id(phone: str) -> int:
    """One phone (``"AH0"``, ``"sp"``, pinyin ``"ang3"``) or punctuation mark (``","``) -> its id."""
    if len(phone) == 1 and phone in PUNCTUATION:
        return SYMBOL_TO_ID[phone]
    sid = SYMBOL_TO_ID.get("@" + phone)
    if sid is None:
        raise ValueError(f"unknown phone {phone!r}: not in ming024's symbol table (ARPAbet, pinyin, sp/spn/sil, or one of {PUNCTUATION!r})")
    return sid


def phones_to_ids(phones: Sequence[str]) -> list[int]:
    """Phones and punctuation marks -> symbol ids, one id per item."""
    return [phone_id(p) for p in phones]


def _outside_braces(text: str) -> list[int]:
    # english_cleaners on punctuation-only text is whitespace collapsing; "_" is never kept.
    text = _WHITESPACE.sub(" ", text)
    bad = [c for c in text if c not in PUNCTUATION]
    if bad:
        raise ValueError(f"text outside {{...}} may hold only punctuation and spaces, got {bad[0]!r}: give words as phones")
    return [SYMBOL_TO_ID[c] for c in text]


def text_to_ids(text: str) -> list[int]:
    """ming024's ``text_to_sequence(text, ["english_cleaners"])`` for ``"{HH AH0 L OW1} , {W ER1 L D}"``."""
    ids: list[int] = []
    while text:
        m = _CURLY.match(text)
        if not m:
            ids += _outside_braces(text)
            break
        ids += _outside_braces(m.group(1))
        ids += phones_to_ids(m.group(2).split())
        text = m.group(3)
    return ids


def ids_to_text(ids: Sequence[int]) -> str:
    """ming024's ``sequence_to_text``: ids -> ``"{HH AH0 L OW1} ,"`` form (for logs and tests)."""
    out = ""
    for i in ids:
        if 0 <= i < N_SYMBOLS:
            s = SYMBOLS[i]
            out += "{" + s[1:] + "}" if len(s) > 1 and s[0] == "@" else s
    return out.replace("}{", " ")
