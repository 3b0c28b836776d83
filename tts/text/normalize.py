"""English text normalisation for TTS.

`english_cleaners` is keithito's (tacotron) pipeline that ming024's FastSpeech 2 checkpoints were trained with:
ASCII folding, lower case, numbers in words (`numbers.py`), abbreviations, whitespace. It equals the reference on
our fixture sentences (tests/fixtures/tts/text/). `normalize_english` is what a voice should say: the same pipeline,
plus percentages and clock times, which the reference leaves as "fifty%" and "three:thirty", and numbers written
without the hyphens and commas that ming024's `preprocess_english` would turn into pauses.

`normalize_for_espeak` is for voices phonemised by espeak-ng (Piper's): espeak reads numbers, currency,
abbreviations, capitals and typography itself, and Piper gives it the raw text, so this changes only what espeak
would misread or reads identically either way: it folds nothing to ASCII and keeps case, digits and whitespace.
"""

from __future__ import annotations

import re
import unicodedata

from .numbers import normalize_numbers, cardinal

# The reference folds with Unidecode (GPL); we fold with NFKD plus this table of the characters that matter for
# English text and have no decomposition, each mapped as Unidecode maps it (so "£" is "PS", as in the reference,
# because keithito folds before the pounds rule can see it).
_ASCII_OF = {
    "\u2018": "'", "\u2019": "'", "\u201a": ",", "\u201b": "'", "\u201c": '"', "\u201d": '"', "\u201e": ',,',
    "\u2032": "'", "\u2033": "''", "\u00ab": "<<", "\u00bb": ">>", "\u2039": "<", "\u203a": ">",
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "\u2009": " ", "\u200a": " ", "\u202f": " ", "\u2002": " ", "\u2003": " ",
    "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00f8": "o", "\u00d8": "O",
    "\u0111": "d", "\u0110": "D", "\u0142": "l", "\u0141": "L", "\u00fe": "th", "\u00de": "Th", "\u00f0": "d",
    "\u00d0": "D", "\u0131": "i",
    "\u00a3": "PS", "\u20ac": "EUR", "\u00a5": "Y=", "\u00a2": "C/", "\u00a9": "(c)", "\u00ae": "(r)",
    "\u00b0": "deg", "\u00d7": "x", "\u00f7": "/", "\u00b7": "*", "\u2022": "*", "\u00a7": "SS", "\u00b6": "P",
}

_ABBREVIATIONS = [(re.compile(r"\b%s\." % short, re.IGNORECASE), long) for short, long in [
    ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"), ("jr", "junior"),
    ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"), ("lt", "lieutenant"),
    ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"),
    ("col", "colonel"), ("ft", "fort"),
]]
_whitespace_re = re.compile(r"\s+")
_percent_re = re.compile(r"([0-9][0-9,]*(?:\.[0-9]+)?)\s?%")
# "1,234" is a count, never a year (keithito drops the comma first and reads "twelve thirty-four").
_grouped_number_re = re.compile(r"(?<![$\u00a3.0-9])\b[0-9]{1,3}(?:,[0-9]{3})+\b(?![.,]?[0-9])")
_time_re = re.compile(r"\b([0-9]|1[0-9]|2[0-3]):([0-5][0-9])\b(\s?[ap]\.?m\.?)?", re.IGNORECASE)


def to_ascii(text: str) -> str:
    """Fold to ASCII: accents stripped ("café" -> "cafe"), typographic quotes and dashes made plain; characters
    with no ASCII reading are dropped."""
    text = "".join(_ASCII_OF.get(c, c) for c in text)
    text = unicodedata.normalize("NFKD", text)
    return text.encode("ascii", "ignore").decode("ascii")


def expand_abbreviations(text: str) -> str:
    for regex, replacement in _ABBREVIATIONS:
        text = regex.sub(replacement, text)
    return text


def collapse_whitespace(text: str) -> str:
    return _whitespace_re.sub(" ", text)


def english_cleaners(text: str) -> str:
    """keithito's `english_cleaners`: "Dr. Smith paid $3.50 in 1984." -> "doctor smith paid three dollars, fifty
    cents in nineteen eighty-four."."""
    text = to_ascii(text).lower()
    text = normalize_numbers(text)
    text = expand_abbreviations(text)
    return collapse_whitespace(text)


def _expand_time(m: re.Match) -> str:
    hours, minutes, meridiem = int(m.group(1)), int(m.group(2)), m.group(3)
    if minutes == 0:
        said = f"{cardinal(hours)} o'clock" if not meridiem else cardinal(hours)
    elif minutes < 10:
        said = f"{cardinal(hours)} oh {cardinal(minutes)}"
    else:
        said = f"{cardinal(hours)} {cardinal(minutes)}"
    if meridiem:
        said += " " + " ".join(meridiem.lower().replace(".", "").strip())
    return _plain(said)


def _plain(words: str) -> str:
    return words.replace("-", " ").replace(",", "")


def normalize_english(text: str) -> str:
    """Text for an English voice: `english_cleaners` plus "50%" -> "fifty percent", "3:05 pm" -> "three oh five p
    m", "3:00" -> "three o'clock", "1,234" as a count, not a year, and numbers without hyphens or commas ("twenty one", "nineteen eighty four")."""
    text = collapse_whitespace(to_ascii(text)).strip()
    text = _time_re.sub(_expand_time, text)
    text = _percent_re.sub(r"\1 percent", text)
    text = _grouped_number_re.sub(lambda m: _plain(cardinal(int(m.group(0).replace(",", "")))), text)
    text = normalize_numbers(text.lower(), plain=True)
    text = expand_abbreviations(text)
    return collapse_whitespace(text).strip()


def normalize_for_espeak(text: str) -> str:
    """Text for espeak-ng, phonemised as Piper does: NFC, so "cafe\u0301" -> "caf\u00e9"; everything else is left to
    espeak, which reads case, digits, symbols, punctuation and whitespace itself.

    espeak's dictionaries spell accented letters precomposed, and it reads a decomposed accent as a letter of its
    own ("cafe\u0301" comes out "kˈeɪf", "café" "kæfˈeɪ"). For text already in NFC, nearly all text, this is the
    identity, so ids stay Piper's. Plainer typography is not made because espeak reads every plain form we tried
    differently somewhere: the curly apostrophe ("U.S.’s" ends a sentence, "U.S.'s" does not), other curly quotes
    and guillemets (stress next to them), the ellipsis character, no-break spaces (a dot before one ends no
    sentence), dashes (en and em dash end a clause like ";", the minus sign is said), and runs of spaces, tabs and
    newlines (they mark the next word, and " - " or "a -2" need single spaces)."""
    return unicodedata.normalize("NFC", text)
