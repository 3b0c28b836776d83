"""Piper's text front end: text -> phonemes per sentence -> phoneme ids, equal to piper-tts 1.8.0's.

Piper (``PiperVoice.phonemize`` and ``phonemes_to_ids``) asks espeak-ng for IPA clause by clause (`espeak.py`),
removes the language-switch flags espeak writes around foreign words ("(fr)"), appends each clause's terminator
(and a space after ``,`` ``:`` ``;``), splits the IPA into Unicode code points after NFD decomposition (so a
combining accent is a phoneme of its own) and starts a new sentence after each clause that ends one. Text inside
``[[ ]]`` is taken as phonemes, character by character. A trailing empty sentence is dropped; empty ones in the
middle (a blank line with only brackets on it) stay, as in Piper. Voices whose config lists ``vowel_clusters``
get those phoneme sequences merged into one phoneme. Arabic diacritisation (Piper's ``use_tashkeel``) is not done.

Ids: ``^`` (start), ``_`` after it and after every phoneme, ``$`` (end); each phoneme may map to several ids.
A phoneme missing from the voice's map is skipped, with one warning per call.

Voices whose ``phoneme_type`` is ``text`` take the NFD code points of the text itself, one sentence; Piper's other
types (pinyin, japanese, hebrew, thai) need their own phonemisers and are refused.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from legato.stream.errors import LegatoError

from . import espeak
from .normalize import normalize_for_espeak

BOS, EOS, PAD = "^", "$", "_"  # Piper's const.py
PHONEME_TYPES = ("espeak", "text")

_LANGUAGE_FLAG_RE = re.compile(r"\([^)]+\)")
_RAW_PHONEMES_RE = re.compile(r"(\[\[.*?\]\])")

_LOGGER = logging.getLogger(__name__)


class PhonemeConfigError(LegatoError, ValueError):
    """A Piper voice config whose text front end legato does not have (phoneme type, id map)."""

    code = "unsupported_model"


def espeak_sentences(text: str, voice: str, *, piper_ipa: bool = True,
                     vowel_clusters: Iterable[Sequence[str]] | None = None) -> list[list[str]]:
    """espeak-ng's clauses -> phonemes per sentence, as Piper's ``EspeakPhonemizer.phonemize``."""
    clusters = {tuple(c) for c in vowel_clusters} if vowel_clusters else None
    sentences: list[list[str]] = []
    current: list[str] = []
    for clause in espeak.clauses(text, voice, piper_ipa=piper_ipa):
        phonemes = _LANGUAGE_FLAG_RE.sub("", clause.phonemes) + clause.terminator
        if clause.terminator in (",", ":", ";"):
            phonemes += " "  # Piper's pause within a sentence
        current.extend(unicodedata.normalize("NFD", phonemes))
        if clause.end_of_sentence:
            sentences.append(_merge_clusters(current, clusters))
            current = []
    if current:
        sentences.append(_merge_clusters(current, clusters))
    return sentences


def phonemize(text: str, voice: str, *, piper_ipa: bool = True,
              vowel_clusters: Iterable[Sequence[str]] | None = None) -> list[list[str]]:
    """Text -> phonemes per sentence for an espeak voice, as Piper's ``PiperVoice.phonemize``.

    "Hi, you." with "en-us" -> [["h", "ˈ", "a", "ɪ", ",", " ", "j", "u", "ː", "."]]."""
    sentences: list[list[str]] = []
    parts = _RAW_PHONEMES_RE.split(text)
    after_raw = False
    for i, part in enumerate(parts):
        if part.startswith("[["):
            if not sentences:
                sentences.append([])
            if i > 0 and parts[i - 1].endswith(" "):
                sentences[-1].append(" ")
            sentences[-1].extend(part[2:-2].strip())
            if i < len(parts) - 1 and parts[i + 1].startswith(" "):
                sentences[-1].append(" ")
            after_raw = True
            continue
        found = espeak_sentences(part, voice, piper_ipa=piper_ipa, vowel_clusters=vowel_clusters)
        if after_raw and found:
            sentences[-1].extend(found[0])  # the text right after raw phonemes continues their sentence
            found = found[1:]
        sentences.extend(found)
        after_raw = False
    if sentences and not sentences[-1]:
        sentences.pop()
    return sentences


def phoneme_ids(phonemes: Iterable[str], id_map: Mapping[str, Sequence[int]]) -> list[int]:
    """Phonemes -> ids: [^, _, p1, _, p2, _, ..., $] with each symbol's ids from ``id_map``."""
    ids = [*id_map[BOS], *id_map[PAD]]
    missing = []
    for phoneme in phonemes:
        found = id_map.get(phoneme)
        if found is None:
            missing.append(phoneme)
            continue
        ids.extend(found)
        ids.extend(id_map[PAD])
    ids.extend(id_map[EOS])
    if missing:
        _LOGGER.warning("phonemes missing from the voice's id map, skipped: %s", "".join(dict.fromkeys(missing)))
    return ids


@dataclass(frozen=True)
class PiperText:
    """A Piper voice's text front end, from its ``.onnx.json``: text -> phoneme ids per sentence."""

    phoneme_type: str  # "espeak" or "text"
    espeak_voice: str  # e.g. "en-us"; unused for "text"
    phoneme_id_map: Mapping[str, tuple[int, ...]] = field(repr=False)
    vowel_clusters: frozenset[tuple[str, ...]] = frozenset()
    piper_ipa: bool = True  # True: IPA as piper-tts 1.8's espeak-ng renders it; False: as 1.52.0 does (espeak.py)

    @classmethod
    def from_config(cls, config: Mapping, *, piper_ipa: bool = True) -> PiperText:
        """From a parsed ``.onnx.json``; an espeak voice is looked up in espeak-ng at once."""
        kind = config.get("phoneme_type", "espeak")
        if kind not in PHONEME_TYPES:
            raise PhonemeConfigError(f"phoneme_type {kind!r} is not supported (legato has {', '.join(PHONEME_TYPES)})")
        id_map = {str(k): tuple(int(i) for i in (v if isinstance(v, (list, tuple)) else [v]))
                  for k, v in (config.get("phoneme_id_map") or {}).items()}
        absent = [s for s in (BOS, EOS, PAD) if not id_map.get(s)]
        if absent:
            raise PhonemeConfigError(f"phoneme_id_map has no ids for {absent}")
        voice = str((config.get("espeak") or {}).get("voice", ""))
        if kind == "espeak":
            if not voice:
                raise PhonemeConfigError("phoneme_type 'espeak' but no espeak.voice")
            espeak.clauses("", voice)  # EspeakVoiceError now rather than at the first request
        clusters = frozenset(tuple(c) for c in config.get("vowel_clusters") or ())
        return cls(kind, voice, id_map, clusters, piper_ipa)

    def phonemes(self, text: str) -> list[list[str]]:
        """Text -> phonemes per sentence (espeak voices: after `normalize_for_espeak`)."""
        if self.phoneme_type == "text":
            return [list(unicodedata.normalize("NFD", text))]
        parts = _RAW_PHONEMES_RE.split(text)  # phonemes written in [[ ]] stay as written
        text = "".join(p if p.startswith("[[") else normalize_for_espeak(p) for p in parts)
        return phonemize(text, self.espeak_voice, piper_ipa=self.piper_ipa, vowel_clusters=self.vowel_clusters or None)

    def sentences(self, text: str) -> list[list[int]]:
        """Text -> phoneme ids per sentence, what the voice's ``input`` takes (one (1, n) row each)."""
        return [phoneme_ids(p, self.phoneme_id_map) for p in self.phonemes(text)]


def _merge_clusters(phonemes: list[str], clusters: set[tuple[str, ...]] | None) -> list[str]:
    """Longest known cluster first, left to right: ["a", "ɪ", "t"] with {("a", "ɪ")} -> ["aɪ", "t"]."""
    if not clusters:
        return phonemes
    longest = max(len(c) for c in clusters)
    out, i = [], 0
    while i < len(phonemes):
        for n in range(min(longest, len(phonemes) - i), 1, -1):
            if tuple(phonemes[i:i + n]) in clusters:
                out.append("".join(phonemes[i:i + n]))
                i += n
                break
        else:
            out.append(phonemes[i])
            i += 1
    return out
