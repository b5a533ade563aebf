"""Messages between a front end and the engine process: tuples, pickled, each framed by its
length, over one Unix stream socket per front end. They stay small (ids, slot indices, times,
a few numbers): pixels and detection rows travel in shared memory (slots.py).

Front end -> engine                              Engine -> front end
  HELLO   (index, pid)                             WELCOME  (entries, segment, layout,
                                                             jpeg_models)
  ADMIT   (tid, model, deadline, held, pixels)     ADMITTED (tid, slot, expected_decode_s)
                                                   REFUSED  (tid, code, message, reason, retry_s)
  SUBMIT  (tid, letterbox, params, deadline,       RESULT   (tid, rows, overflow, batch_size,
           decode_s, jpeg or None)                           executed, queue_s, infer_s, post_s)
  DROP    (tid, decode_s or None)                  FAILED   (tid, code, message)
  CANCEL  (tid)

`jpeg_models`: the keys of the models whose engines decode JPEGs on their device (torch-cuda
`decode: device`); for those a front end leaves a JPEG encoded, and SUBMIT's `jpeg` says what
the engine needs to decode and letterbox it (`JpegWire`). The bytes lie in the slot; one larger
than the slot's image region travels in the message itself (as reply rows beyond the reply
region do), so every JPEG the device takes is decoded there, as in one process.

Deadlines are time.monotonic() seconds: one clock for every process on the host.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any

HELLO, WELCOME = "hello", "welcome"
ADMIT, ADMITTED, REFUSED = "admit", "admitted", "refused"
SUBMIT, RESULT, FAILED = "submit", "result", "failed"
DROP, CANCEL = "drop", "cancel"

Message = tuple[Any, ...]
# (size, stored_size, orientation, resized, offset, inline bytes or None: in the slot)
JpegWire = tuple[int, tuple[int, int], int, tuple[int, int], tuple[int, int], bytes | None]
_LENGTH = struct.Struct("!I")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a WELCOME with many manifests is the largest


class ProtocolError(RuntimeError):
    """The peer sent something that is not a message of this protocol."""


def frame(message: Message) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class MessageStream(asyncio.Protocol):
    """One end of a connection: `send` a message; each one received goes to `on_message`,
    and `on_lost` is told once when the connection ends (None: closed cleanly).

    Messages sent in one turn of the event loop leave in one write (the replies of a batch,
    the calls that arrived together): a system call per message was a tenth of a front end's
    event-loop time."""

    def __init__(self, on_message: Callable[[Message], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._outbox: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # a stream socket's always is
            raise TypeError(f"MessageStream needs a stream transport, got "
                            f"{type(transport).__name__}")
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        buffer = self._buffer
        start = 0
        try:
            while len(buffer) - start >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer, start)
                if size > MAX_MESSAGE_BYTES:
                    raise ProtocolError(f"message of {size} bytes, above {MAX_MESSAGE_BYTES}")
                end = start + _LENGTH.size + size
                if len(buffer) < end:
                    break
                message = pickle.loads(buffer[start + _LENGTH.size:end])
                start = end
                if not isinstance(message, tuple) or not message:
                    raise ProtocolError(f"expected a tuple message, got {type(message).__name__}")
                self._on_message(message)
        except Exception as exc:
            # A bug or a stranger on the socket: drop the connection, never guess.
            del buffer[:start]
            self.abort(exc)
            return
        del buffer[:start]

    def send(self, message: Message) -> None:
        if self._transport is None or self.closed:
            return
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(frame(message))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if outbox and self._transport is not None and not self.closed:
            self._transport.write(b"".join(outbox))

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._flush()
            self._transport.close()

    def abort(self, exc: Exception) -> None:
        if self._transport is not None and not self.closed:
            self._transport.abort()
        self._lost(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_lost(exc)
