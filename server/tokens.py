"""The bearer tokens a server accepts: a token file (re-read when it changes) or a fixed text.

One entry a line, in the file and in DETSERVE_AUTH_TOKENS (where ';' also ends an entry):

    TOKEN                    any served model
    TOKEN shapes,other@640   only these: a name allows each of its variants, name@variant one

Blank lines and lines starting with '#' are skipped. A token has at least MIN_TOKEN_CHARS
characters and no whitespace.

Only SHA-256 digests are kept. A presented token is hashed and compared with every digest by
hmac.compare_digest, so neither an early mismatch nor the position of the match shows in the
time taken. Logs and messages name a token by its fingerprint, the first 8 hex digits of its
digest, never by the token itself; a parse error names the line, not its text.

Rotation without a restart: `authenticate` stats the file at most once per CHECK_INTERVAL_S and
re-reads it when its mtime, size or inode changed (an editor's rename counts). A file that
cannot be read or parsed keeps the tokens in force, with an error logged: a half-written file
must not lock every caller out. An empty file is read as it is: no token is accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

MIN_TOKEN_CHARS = 16
CHECK_INTERVAL_S = 1.0
GENERATE_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class TokenFormatError(ValueError):
    """A token list that cannot be used; the message names the line, never the token."""


class EventSink(Protocol):
    def __call__(self, name: str, **fields: Any) -> None: ...


def _no_events(name: str, **fields: Any) -> None:
    return None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def fingerprint(token: str) -> str:
    """What logs and messages say instead of a token: 8 hex digits of its SHA-256."""
    return digest(token).hex()[:8]


@dataclass(frozen=True)
class Grant:
    """What one accepted token may do. `models` None: every served model."""

    fingerprint: str
    models: frozenset[str] | None = None

    def allows(self, key: str, name: str) -> bool:
        """May this token call the model served as `key` ("name@variant") named `name`?"""
        return self.models is None or key in self.models or name in self.models


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    grant: Grant


def _parse_line(line: str, where: str) -> _Entry:
    parts = line.split()
    if len(parts) > 2:
        raise TokenFormatError(
            f"{where}: expected 'TOKEN' or 'TOKEN MODEL[,MODEL...]', got {len(parts)} "
            f"whitespace-separated fields"
        )
    token = parts[0]
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenFormatError(
            f"{where}: the token has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}; "
            f"make one with {GENERATE_HINT}"
        )
    models = None
    if len(parts) == 2:
        names = [m for m in parts[1].split(",") if m]
        if not names:
            raise TokenFormatError(f"{where}: the model list is empty")
        models = frozenset(names)
    return _Entry(digest(token), Grant(fingerprint(token), models))


def parse_tokens(text: str, source: str, separators: str = "\n") -> tuple[_Entry, ...]:
    """The entries of a token list; TokenFormatError names `source` and the line."""
    for sep in separators:
        text = text.replace(sep, "\n")
    entries: list[_Entry] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = _parse_line(line, f"{source} entry {number}")
        if entry.digest in seen:
            raise TokenFormatError(
                f"{source} entry {number} repeats the token of entry {seen[entry.digest]}"
            )
        seen[entry.digest] = number
        entries.append(entry)
    return tuple(entries)


def _file_stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class TokenStore:
    """The accepted tokens; `authenticate` answers a presented token with its Grant or None."""

    def __init__(self, entries: tuple[_Entry, ...], source: str, path: Path | None = None,
                 events: EventSink = _no_events,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.path = path
        self._entries = entries
        self._events = events
        self._clock = clock
        self._stamp = _file_stamp(path) if path is not None else None
        self._checked = clock()
        self._loaded("auth_tokens_loaded")

    @classmethod
    def from_file(cls, path: Path, events: EventSink = _no_events,
                  clock: Callable[[], float] = time.monotonic) -> TokenStore:
        """OSError or TokenFormatError when the file cannot be used at start."""
        return cls(parse_tokens(path.read_text(), str(path)), str(path), path, events, clock)

    @classmethod
    def from_text(cls, text: str, source: str, events: EventSink = _no_events) -> TokenStore:
        return cls(parse_tokens(text, source, separators="\n;"), source, None, events)

    @property
    def fingerprints(self) -> list[str]:
        return [e.grant.fingerprint for e in self._entries]

    def authenticate(self, token: str) -> Grant | None:
        self.maybe_reload()
        presented = digest(token)
        found: Grant | None = None
        for entry in self._entries:  # no early exit: the match's position stays hidden
            if hmac.compare_digest(presented, entry.digest):
                found = entry.grant
        return found

    def maybe_reload(self) -> bool:
        """Re-read the file if CHECK_INTERVAL_S passed since the last look and it changed."""
        now = self._clock()
        if self.path is None or now - self._checked < CHECK_INTERVAL_S:
            return False
        return self.check_now()

    def check_now(self) -> bool:
        """Stat the file now and re-read it if it changed; True when new tokens took effect."""
        if self.path is None:
            return False
        self._checked = self._clock()
        try:
            stamp = _file_stamp(self.path)
            if stamp == self._stamp:
                return False
            entries = parse_tokens(self.path.read_text(), self.source)
        except (OSError, UnicodeDecodeError, TokenFormatError) as exc:
            # Keep the tokens in force; the stamp stays old, so a fixed file is read next time.
            self._events("auth_tokens_reload_failed", source=self.source,
                         error=f"{type(exc).__name__}: {exc}", kept=len(self._entries))
            return False
        self._entries, self._stamp = entries, stamp
        self._loaded("auth_tokens_reloaded")
        return True

    def _loaded(self, event: str) -> None:
        scoped = sum(1 for e in self._entries if e.grant.models is not None)
        self._events(event, source=self.source, tokens=len(self._entries), scoped=scoped,
                     fingerprints=self.fingerprints)
