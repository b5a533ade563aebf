"""Which camera a request comes from: the caller's `detserve-camera-id` call metadata, else, for
a DetectStream, an id of the stream's own ("stream-<n>": one stream is one camera). Unary calls
without the metadata belong to no camera; they still count for the model's distribution shift.

An id becomes a Prometheus label value, so it is checked: 1-64 characters of letters, digits
and `._:/-`, not "other" (the label of the cameras beyond the label limit) and not starting
with "stream-" (the server's own ids).
"""

from __future__ import annotations

import itertools
import os
import re

import grpc

from detserve.server.errors import invalid

CAMERA_KEY = "detserve-camera-id"
OTHER = "other"  # the label of the cameras that have none of their own (drift.py)
STREAM_PREFIX = "stream-"  # ids the server gives streams whose caller named no camera
_ID = re.compile(r"[A-Za-z0-9._:/-]{1,64}")
_streams = itertools.count(1)
# Front ends (server/workers) each number their own streams; their pid keeps the ids apart in
# the one /metrics they share.
_PREFIX = (f"{STREAM_PREFIX}{os.getpid()}-" if os.environ.get("PROMETHEUS_MULTIPROC_DIR")
           else STREAM_PREFIX)


def check_camera_id(text: str) -> str:
    """`text` if it is a valid camera id; else RequestError (INVALID_ARGUMENT)."""
    if not _ID.fullmatch(text) or text == OTHER or text.startswith(STREAM_PREFIX):
        raise invalid(f"metadata {CAMERA_KEY} must be 1-64 characters of letters, digits and "
                      f"'._:/-', not {OTHER!r} and not starting with {STREAM_PREFIX!r}; got "
                      f"{text[:80]!r}")
    return text


def camera_id(context: grpc.aio.ServicerContext[object, object]) -> str:
    """The caller's camera id from the call metadata, or "" when it gave none."""
    for key, value in context.invocation_metadata() or ():
        if key == CAMERA_KEY:
            return check_camera_id(value.decode() if isinstance(value, bytes) else value)
    return ""


def stream_camera_id() -> str:
    """A new id for a stream whose caller named no camera."""
    return f"{_PREFIX}{next(_streams)}"
