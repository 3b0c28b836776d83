"""Errors with stable codes.

Every error a client can cause has a ``code`` (a short stable name the servers
put on the wire, documented in docs/ERRORS.md) and a message that says what was
wrong and what would be right.
"""

from __future__ import annotations


class LegatoError(Exception):
    """Base of legato's errors. ``code`` is stable; the message is for people."""

    code = "internal"


class AudioFormatError(LegatoError, ValueError):
    """Client audio that cannot be decoded: odd byte counts, bad encoding, wrong channels."""

    code = "bad_audio"


class NonFiniteAudioError(AudioFormatError):
    """Samples that are NaN or infinite."""

    code = "non_finite_audio"


class SampleRateError(LegatoError, ValueError):
    """A sample rate that is not positive or not supported where it is used."""

    code = "bad_sample_rate"


class CapacityError(LegatoError, RuntimeError):
    """No room for another stream (state pool or session limit)."""

    code = "capacity"


class StageError(LegatoError, RuntimeError):
    """A stage failed on one stream; other streams are unaffected."""

    code = "stage_failed"


class ClosedError(LegatoError, RuntimeError):
    """Input pushed to a stream that has ended."""

    code = "closed"
