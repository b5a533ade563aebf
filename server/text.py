"""How text from outside (a caller's fields, an exception's message) is quoted in error messages
and log lines: clipped, so a 16 KB name or a 1 MB id cannot make either unwieldy."""

from __future__ import annotations

ECHO_CHARS = 64  # of a caller's text quoted back in an error message


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, with an ellipsis and its full length when it was
    longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"
