"""Client-supplied text in log lines: escaped and cut, so no client can write a line of its own into the log.

Every log call that interpolates something a client sent (a field name, a request id, an error message that
quotes the client) passes it through :func:`loggable`: control characters, newlines included, and anything
outside printable ASCII become backslash escapes, and long values are cut.
"""

from __future__ import annotations

MAX_LOGGED_CHARS = 200


def loggable(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """``str(value)`` as one line of printable ASCII: "a\\nb" -> 'a\\\\nb'; at most ``limit`` characters before escaping."""
    text = str(value)
    cut = len(text) > limit
    text = text[:limit].encode("unicode_escape").decode("ascii")
    return text + "..." if cut else text
