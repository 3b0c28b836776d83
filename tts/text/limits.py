"""Bounds on what a voice is asked to say after normalisation, not on what the client typed.

The service refuses requests over 2,000 characters before any voice sees them, but normalisation can
multiply the text: "7777777 " 250 times reads as 19,749 characters of number words, all one sentence,
and a sentence is one attention matrix (FastSpeech 2 asked for 31 GB). So each voice bounds its own
normalised text here: the whole request (refused with :class:`TextTooLongError` past
``MAX_NORMALISED_CHARS``) and each sentence (cut at word boundaries into pieces of at most
``MAX_SENTENCE_CHARS``). Voices that count phonemes instead of characters use the same numbers.
"""

from __future__ import annotations

from legato.stream.errors import LegatoError

MAX_NORMALISED_CHARS = 8000  # a request after normalisation: 4x the request limit, room for numbers read out
MAX_SENTENCE_CHARS = 400  # one model call's sentence (about 25 s of speech)


class TextTooLongError(LegatoError, ValueError):
    """The request's text is too long once normalised; the message says by how much."""

    code = "bad_request"


def check_total(length: int, what: str = "characters") -> None:
    if length > MAX_NORMALISED_CHARS:
        raise TextTooLongError(
            f"the text reads as {length} {what} once normalised (numbers and abbreviations written out); the limit is "
            f"{MAX_NORMALISED_CHARS}: send it as several requests"
        )


def split_long(sentence: str, limit: int = MAX_SENTENCE_CHARS) -> list[str]:
    """A sentence in pieces of at most ``limit`` characters, cut at the last space before it (a longer word is cut)."""
    pieces = []
    rest = sentence.strip()
    while len(rest) > limit:
        cut = rest.rfind(" ", 0, limit + 1)
        cut = cut if cut > 0 else limit
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        pieces.append(rest)
    return pieces


def bounded_sentences(sentences: list[str], limit: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Normalised sentences -> the same text in pieces of at most ``limit`` characters; refused past the request bound."""
    check_total(sum(len(s) for s in sentences))
    return [piece for s in sentences for piece in split_long(s, limit)]
