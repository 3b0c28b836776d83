"""Bearer tokens, shared by the WebSocket and gRPC servers: read once, compared in constant time, never logged.

An empty token is refused everywhere: read from an empty file it would turn auth off (gRPC) or accept an
empty token (WebSocket) without a word, so ``legato serve`` refuses to start instead.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from legato.stream.errors import LegatoError


class AuthConfigError(LegatoError, ValueError):
    """The token file is unreadable or holds no token; the server does not start."""

    code = "bad_auth_config"


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped); AuthConfigError if it cannot be read or is empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"--auth-token-file {path}: cannot read it: {exc}") from None
    check_token(token, f"--auth-token-file {path}")
    return token


def check_token(token: str | None, where: str = "auth_token") -> None:
    """None (auth off) or a non-empty token of printable characters."""
    if token is None:
        return
    if not token:
        raise AuthConfigError(f"{where}: the token is empty; it would let any client in (leave auth off explicitly instead)")
    if not token.isprintable():
        raise AuthConfigError(f"{where}: the token holds control characters; it cannot travel in an HTTP header")


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a token that is not valid UTF-8 text (a lone surrogate from JSON) never matches."""
    if given is None:
        return False
    try:
        sent = given.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(sent, expected.encode("utf-8"))
