"""espeak-ng through ctypes: text -> IPA phonemes clause by clause, as Piper's ``espeakbridge`` gives them.

Which binding, and why this one:

- the shared library and its data come from the ``espeakng-loader`` wheel (espeak-ng 1.52.0 with its compiled
  ``espeak-ng-data``, on PyPI for Linux, macOS and Windows): no apt, no compiler. Debian bookworm packages 1.51;
- ``piper-phonemize`` (Piper's old binding) is no longer maintained, and ``phonemizer`` splits and restores
  punctuation with its own rules, which are not the clause terminators Piper appends;
- this file is plain ctypes: nothing of ours is compiled against espeak-ng.

espeak-ng is GPL-3.0. legato loads it at run time as a separate shared library, with the data beside it; it is never
linked into legato nor copied into this repository.

Piper's bridge loops ``espeak_TextToPhonemesWithTerminator`` over the text and keeps each clause's terminator
(``.`` ``?`` ``!`` ``,`` ``:`` ``;`` or nothing) and whether the clause ends a sentence. The 1.52.0 library in the wheel
lacks that function, so with it we call ``espeak_TextToPhonemes`` and read the terminator off the text the clause
consumed (``_terminator``): espeak reads one character past a clause end (the first non-space after the mark, or the
text's closing NUL), so a clause's bytes are [clause][mark][spaces][read-ahead], and the next clause starts with
the read-ahead character. A library that has the function is used the way Piper uses it.

Piper 1.8 also bundles an espeak-ng that renders IPA without looking at the previous phoneme, so two conditional
IPA rules of the English phoneme tables never fire there: the linking j after an i vowel prints as ``ʲ``
("see it" -> ``sˈiːʲ ɪt``, hidden by 1.52.0) and the flap after ``@-`` prints ``ɾ`` (1.52.0: ``r``). With
``piper_ipa=True`` (the default) we reproduce that: one more pass over the text writes espeak's own phoneme
names, separated, beside the IPA, so each ``;`` and ``*`` phoneme can be found in the IPA (``_piper_ipa``).
Voices trained with piper-phonemize (2023) saw the 1.52.0 rendering; ``piper_ipa=False`` gives it.

Piper's build also has newer English dictionary data, which no rendering can make up for: "has been" (Piper
``hɐzbɪn``, 1.52.0 the noun "has-been", ``hˈæzbiːn``) and a handful of rare words differ (the list is in
tests/fixtures/make_piper_phonemes.py). ``engine(library, data)`` loads another espeak-ng build instead.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from legato.stream.errors import LegatoError

AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: no audio device, no thread
INITIALIZE_DONT_EXIT = 0x8000  # without it a bad data path makes espeak-ng call exit(1)
CHARS_AUTO = 0  # UTF-8, or ISO-8859 where bytes are not UTF-8 (Piper's choice)
PHONEMES_IPA = 0x02
SEPARATOR = "\ue000"  # between phonemes in the piper_ipa pass; a private-use character espeak never writes

# Clause types (espeak-ng translate.h) as Piper's bridge compares them, after masking with 0x000FFFFF.
CLAUSE_TYPE_SENTENCE = 0x80000
_TERMINATOR_OF_CLAUSE = {
    40 | 0x0000 | 0x80000: ".",
    40 | 0x2000 | 0x80000: "?",
    45 | 0x3000 | 0x80000: "!",
    20 | 0x1000 | 0x40000: ",",
    30 | 0x0000 | 0x40000: ":",
    30 | 0x1000 | 0x40000: ";",
}

# Marks that end a clause when followed by a space, bracket, quote or the end (espeak-ng readclause.c), with
# what Piper's bridge makes of them: (terminator, ends a sentence). Marks whose clause type carries bits that
# Piper's mask keeps (optional space after, as in CJK and fullwidth forms) match none of its six and give "".
_MARKS = {
    ".": (".", True), "?": ("?", True), "!": ("!", True), ",": (",", False), ":": (":", False), ";": (";", False),
    "\u2013": (";", False), "\u2014": (";", False),  # en and em dash: "extended dash", a semicolon to espeak
    "\u2026": ("", False),  # ellipsis, also three or more dots
    "\u203c": ("!", True), "\u2047": ("?", True),  # ‼ ⁇
    "\u00a1": ("", False), "\u00bf": ("", False),  # ¡ ¿
    "\u3002": ("", True), "\uff0e": ("", True), "\uff01": ("", True), "\uff1f": ("", True),
    "\u3001": ("", False), "\uff0c": ("", False), "\uff1a": ("", False), "\uff1b": ("", False),
    "\ufe50": (",", False), "\ufe51": (",", False), "\ufe52": (".", True), "\ufe54": (";", False),
    "\ufe55": (":", False), "\ufe56": ("?", True), "\ufe57": ("!", True),
}

# Phonemes whose IPA Piper's build renders without the previous-phoneme condition: espeak's name -> (1.52.0's
# IPA in that case, Piper's).
_PIPER_IPA = {";": ("", "ʲ"), "*": ("r", "ɾ")}


class EspeakError(LegatoError, RuntimeError):
    """The espeak-ng library or its data cannot be loaded."""

    code = "espeak_unavailable"


class EspeakVoiceError(LegatoError, ValueError):
    """espeak-ng has no voice by this name (a voice config's ``espeak.voice``)."""

    code = "unsupported_model"


@dataclass(frozen=True)
class Clause:
    """One clause of espeak-ng's output, with what Piper's bridge makes of its clause type."""

    phonemes: str  # IPA as espeak-ng writes it: stress marks, "(fr)" language switches, words split by spaces
    terminator: str  # ".", "?", "!", ",", ":", ";" or ""
    end_of_sentence: bool


class Espeak:
    """One loaded espeak-ng library. Its state is global to the process, so every call holds ``lock``."""

    def __init__(self, library: str, data: str):
        if not Path(data, "phontab").is_file():
            raise EspeakError(f"espeak-ng data not found: {data} has no phontab")
        try:
            lib = ctypes.CDLL(library)
        except OSError as exc:
            raise EspeakError(f"cannot load the espeak-ng library {library}: {exc}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self._with_terminator = getattr(lib, "espeak_TextToPhonemesWithTerminator", None)
        if self._with_terminator is not None:
            self._with_terminator.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int,
                                              ctypes.POINTER(ctypes.c_int)]
            self._with_terminator.restype = ctypes.c_char_p
        if lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(data), INITIALIZE_DONT_EXIT) <= 0:
            raise EspeakError(f"espeak-ng did not initialise with the data in {data}")
        self._lib = lib
        self.library, self.data = library, data
        self.lock = threading.Lock()

    def clauses(self, text: str, voice: str, *, piper_ipa: bool = True) -> list[Clause]:
        """Text -> its clauses in order, as Piper's bridge returns them (see the module docstring).

        ``voice`` is an espeak voice name ("en-us"); ``piper_ipa`` renders the IPA as Piper 1.8's espeak-ng does."""
        raw = _c_text(text)
        # With piper_ipa both passes separate phonemes, so that they align; without the separators the IPA is
        # espeak's usual one.
        separated = ord(SEPARATOR) << 8 if piper_ipa else 0
        with self.lock:
            ipa, spans, terminators = self._pass(raw, voice, PHONEMES_IPA | separated)
            names = self._pass(raw, voice, separated)[0] if piper_ipa else None
        if names is not None and len(names) == len(ipa):
            ipa = [_piper_ipa(n, p) for n, p in zip(names, ipa)]
        out, carried = [], ""
        for i, (phonemes, span) in enumerate(zip(ipa, spans)):
            if terminators is None:
                text = span.decode("utf-8", "replace")
                final = i == len(spans) - 1
                read_ahead = "" if final else text[-1:]
                terminator, eos = _terminator(carried + text[:len(text) - len(read_ahead)], read_ahead, final)
                carried = read_ahead
            else:
                terminator, eos = terminators[i]
            out.append(Clause(phonemes.replace(SEPARATOR, ""), terminator, eos))
        return out

    def _pass(self, raw: bytes, voice: str, mode: int):
        """One loop over the text like Piper's bridge -> (phonemes, consumed bytes, terminators or None) per clause."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakVoiceError(f"espeak-ng has no voice {voice!r} (data: {self.data})")
        buf = ctypes.create_string_buffer(raw)  # kept alive for the loop: espeak reads it through the pointer
        start = ctypes.addressof(buf)
        pointer = ctypes.c_void_p(start)
        phonemes, spans, terminators = [], [], []
        offset = 0
        while pointer.value is not None:
            if self._with_terminator is not None:
                clause_type = ctypes.c_int(0)
                out = self._with_terminator(ctypes.byref(pointer), CHARS_AUTO, mode, ctypes.byref(clause_type))
                masked = clause_type.value & 0x000FFFFF
                terminators.append((_TERMINATOR_OF_CLAUSE.get(masked, ""), bool(masked & CLAUSE_TYPE_SENTENCE)))
            else:
                out = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), CHARS_AUTO, mode)
            end = len(raw) if pointer.value is None else pointer.value - start
            phonemes.append((out or b"").decode("utf-8", "replace"))
            spans.append(raw[offset:end])
            offset = end
        if raw.endswith(b"..") and not raw.endswith(b"..."):
            # espeak ended the text on its first dot and keeps the second one for the next call, which would
            # read it before its own text: consume it here so that every call starts clean.
            empty = ctypes.create_string_buffer(b"")
            self._lib.espeak_TextToPhonemes(ctypes.byref(ctypes.c_void_p(ctypes.addressof(empty))), CHARS_AUTO, mode)
        return phonemes, spans, terminators if self._with_terminator is not None else None


def _c_text(text: str) -> bytes:
    """UTF-8 for espeak: without NUL (it would end the C string) and other control characters (0x01 starts an
    espeak embedded command), and without what UTF-8 cannot encode (lone surrogates)."""
    kept = "".join(c if c in "\t\n\r" or unicodedata.category(c) != "Cc" else " " for c in text)
    return kept.encode("utf-8", "ignore")


def _terminator(clause: str, read_ahead: str, final: bool) -> tuple[str, bool]:
    """(terminator, ends a sentence) of a clause from its text, as espeak-ng's clause type gives them to Piper.

    ``clause`` is the clause's text up to where espeak stopped (its first character is the previous clause's
    read-ahead), ``read_ahead`` the character espeak read past the end ("" at the end of the text)."""
    marks = clause.rstrip()
    newlines = clause[len(marks):].count("\n")
    if newlines >= 2:
        return "", True  # a blank line: a paragraph (or a mark's pause lengthened by it), no terminator Piper knows
    run = len(marks)
    while run > 0 and marks[run - 1] in _MARKS:
        run -= 1
    first = marks[run:run + 1]
    if not first:
        return "", final  # the text's end, or a clause cut for length
    if not newlines:  # espeak checks these two only when no newline follows the mark
        if not any(c.isalnum() for c in marks[:run]):
            return "", final  # marks before any letter or digit never end a clause
        if first == "." and read_ahead.islower():
            return "", False  # nor does a dot before a lower-case word: this clause was cut for length
    if marks[run:run + 3] == "...":
        return _MARKS["\u2026"]  # espeak reads three or more dots as an ellipsis
    return _MARKS[first]  # espeak takes the first mark and swallows the marks right after it


def _piper_ipa(names: str, ipa: str) -> str:
    """A clause's IPA as Piper's espeak-ng renders it, from the same clause in espeak's phoneme names.

    Both are written with SEPARATOR between the phonemes of a word, so they align phoneme by phoneme, except that
    espeak writes no separator before an IPA phoneme that starts with a modifier letter (U+02B0..U+036F, like ʲ),
    which then shares its predecessor's slot. Stress marks lead a slot in both."""
    names_words, ipa_words = names.split(" "), ipa.split(" ")
    if len(names_words) != len(ipa_words):
        return ipa
    out = []
    for name_word, ipa_word in zip(names_words, ipa_words):
        slots_n, slots_i = name_word.split(SEPARATOR), ipa_word.split(SEPARATOR)
        fixed, j = list(slots_i), 0
        for i, name in enumerate(slots_n):
            name = name.lstrip("',")  # stress marks
            if name == ";" and len(slots_i) - j < len(slots_n) - i:
                continue  # written as ʲ in the previous slot
            if j < len(slots_i) and name in _PIPER_IPA and slots_i[j] == _PIPER_IPA[name][0]:
                fixed[j] = _PIPER_IPA[name][1]
            j += 1
        out.append(SEPARATOR.join(fixed if j == len(slots_i) else slots_i))  # unaligned: leave the word as it is
    return " ".join(out)


_ENGINES: dict[str, Espeak] = {}
_ENGINES_LOCK = threading.Lock()


def engine(library: str | None = None, data: str | None = None) -> Espeak:
    """The espeak-ng of a library file, loaded on first use (default: the espeakng-loader wheel's library and data).

    One per library file: a library's state is global to the process, so it serves one data directory."""
    if library is None or data is None:
        default_library, default_data = _wheel_paths()
        library, data = library or default_library, data or default_data
    key = os.path.realpath(library)
    with _ENGINES_LOCK:
        found = _ENGINES.get(key)
        if found is None:
            found = _ENGINES[key] = Espeak(library, data)
        elif os.path.realpath(found.data) != os.path.realpath(data):
            raise EspeakError(f"{library} is already initialised with the data in {found.data}, not {data}")
        return found


@functools.cache
def _wheel_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError:
        raise EspeakError("espeak-ng is not installed: pip install espeakng-loader") from None
    try:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except RuntimeError as exc:  # its data folder is missing
        raise EspeakError(str(exc)) from None


def clauses(text: str, voice: str, *, piper_ipa: bool = True) -> list[Clause]:
    """Text -> clauses with the default espeak-ng; ``voice`` is an espeak voice name such as "en-us"."""
    return engine().clauses(text, voice, piper_ipa=piper_ipa)
