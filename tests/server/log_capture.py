"""The server's JSON log lines captured in memory, for tests that assert on what was logged."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from detserve.server.logs import configure_logging


class CapturedLog:
    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.buffer.getvalue().splitlines()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def longest(self) -> int:
        return max((len(line) for line in self.buffer.getvalue().splitlines()), default=0)


@pytest.fixture
def captured_log() -> Iterator[CapturedLog]:
    """Configure logging into memory (before the server starts: its loggers bind then)."""
    log = CapturedLog()
    configure_logging("INFO", stream=log.buffer)
    yield log
    structlog.reset_defaults()
