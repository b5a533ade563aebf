"""What `detserve-client` prints: results, errors and exit codes, as text or JSON lines.

Under --json everything the client says goes to stdout as one JSON object per line: results,
per-input errors ({"image": ..., "error": {...}}), fatal errors ({"error": {...}}) and the stream
summary ({"summary": {...}}). Without it, results go to stdout and errors to stderr, one line each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import grpc

from detserve.client.results import DetectError, DetectResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_CODES_HELP = """exit codes:
  0  every request was answered
  1  some requests failed (a missing or unreadable image, a refusal, a frame with an error)
  2  usage error (bad flags, an unknown class name, a video OpenCV cannot read, no input)
  3  server unavailable (nothing listening at --target, or the server is shutting down)"""


class UsageError(Exception):
    """A mistake in the command line or its inputs: one line, exit code 2."""


def unavailable_hint(target: str, err: DetectError) -> str:
    if "shutting down" in err.details:
        return f"the server at {target} is shutting down; retry once it is back"
    if "handshake failed" in err.details.lower():
        return ("the TLS handshake failed: check --ca-file (the CA that signed the server's "
                "certificate), --server-name, and --cert-file/--key-file if the server "
                "requires client certificates")
    return (f"is the server running at {target}? Start one with `detserve-server` or "
            f"`bash run.sh serve`, or point --target at it; a server with TLS needs --ca-file "
            f"or --tls")


def error_json(err: BaseException, target: str) -> dict[str, Any]:
    """{"code", "message", "origin"[, "hint"]}: gRPC status names for the server's refusals, and
    the nearest one for what the client refused itself (origin "client")."""
    if isinstance(err, DetectError):
        out: dict[str, Any] = {"code": err.code.name, "message": err.details, "origin": "server"}
        if err.code is grpc.StatusCode.UNAVAILABLE:
            out["hint"] = unavailable_hint(target, err)
        return out
    code = "NOT_FOUND" if isinstance(err, FileNotFoundError) else "INVALID_ARGUMENT"
    return {"code": code, "message": str(err), "origin": "client"}


def _padding(result: DetectResult) -> str:
    """", run as 8" when the engine ran the batch padded to compiled sizes."""
    ran = result.executed_batch_size
    return f", run as {ran}" if ran > result.batch_size else ""


def format_result(result: DetectResult, name: str) -> str:
    """Human-readable lines for one image or frame."""
    if result.error is not None:
        return f"{name}: {result.error}"
    t = result.timing
    head = (
        f"{name}: {len(result.detections)} objects, {result.latency_ms:.1f} ms round trip "
        f"(server: queue {t.queue_ms:.1f} + pre {t.preprocess_ms:.1f} + infer "
        f"{t.inference_ms:.1f} + post {t.postprocess_ms:.1f} ms; batch {result.batch_size}"
        f"{_padding(result)}; {result.model})"
    )
    lines = [head]
    for d in result.detections:
        box = ", ".join(f"{v:.1f}" for v in d.bbox)
        lines.append(f"  {d.label:<12} {d.score:.3f}  [{box}]")
    return "\n".join(lines)


class Output:
    """Prints for one command run; `as_json` picks JSON lines over text."""

    def __init__(self, as_json: bool, target: str) -> None:
        self.as_json = as_json
        self.target = target

    def _json(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    def result(self, result: DetectResult, name: str, saved: Path | None = None) -> None:
        if self.as_json:
            extra = {"saved": str(saved)} if saved is not None else {}
            self._json({"image": name, **result.to_json(), **extra})
        else:
            text = format_result(result, name)
            print(text if saved is None else f"{text}\n  saved {saved}", flush=True)

    def failure(self, name: str, err: BaseException) -> None:
        """One input failed; the run goes on."""
        if self.as_json:
            self._json({"image": name, "error": error_json(err, self.target)})
        else:
            print(f"{name}: {err}", file=sys.stderr, flush=True)

    def fatal(self, err: BaseException) -> int:
        """The run cannot go on: one line, and the exit code for it."""
        unavailable = isinstance(err, DetectError) and err.code is grpc.StatusCode.UNAVAILABLE
        code = (EXIT_USAGE if isinstance(err, UsageError)
                else EXIT_UNAVAILABLE if unavailable else EXIT_FAILED)
        if self.as_json:
            self._json({"error": error_json(err, self.target)})
        elif isinstance(err, DetectError) and unavailable:
            print(f"error: {err} — {unavailable_hint(self.target, err)}", file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
        return code

    def summary(self, summary: dict[str, Any], text: str) -> None:
        if self.as_json:
            self._json({"summary": summary})
        else:
            print(text, flush=True)
