"""How a client reaches a server with TLS or tokens: `ChannelSecurity`, and the channels it opens.

    ChannelSecurity(ca_file="ca.pem", token=os.environ["DETSERVE_TOKEN"])      # TLS + token
    ChannelSecurity(ca_file="ca.pem", cert_file="me.pem", key_file="me.key")   # mutual TLS
    ChannelSecurity(tls=True)   # TLS, trusting the system's CAs (a public certificate)

TLS is on when `tls` is true or any TLS file or `server_name` is given. `server_name` is the
name the server's certificate must carry when it differs from the target's host (connecting by
IP to a certificate made out to a DNS name).

The token goes on every call as `authorization: Bearer <token>`, added by a channel interceptor.
Over plaintext it still goes, for a loopback server or a TLS-terminating proxy in front of the
server; anywhere else anyone on the path can read it, so use TLS there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import grpc.aio

AUTH_KEY = "authorization"

ChannelOptions = Sequence[tuple[str, Any]]


class ChannelSecurityError(ValueError):
    """A TLS file that cannot be read, or options that do not go together."""


@dataclass(frozen=True)
class ChannelSecurity:
    tls: bool = False
    ca_file: str | Path | None = None  # PEM CA(s) the server's certificate must chain to
    cert_file: str | Path | None = None  # PEM client certificate, for mutual TLS
    key_file: str | Path | None = None  # its private key
    server_name: str | None = None  # the name to expect on the server's certificate
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ChannelSecurityError("a client certificate needs both cert_file and key_file "
                                       "(--cert-file, --key-file)")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ChannelSecurityError("the token must be non-empty and without whitespace")

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(v is not None for v in (self.ca_file, self.cert_file,
                                                       self.key_file, self.server_name))

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS channel credentials; ChannelSecurityError names a file that cannot be read."""
        cert = _read(self.cert_file, "client certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA"),
            private_key=_read(self.key_file, "client key"),
            certificate_chain=cert,
        )

    def options(self) -> list[tuple[str, Any]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.token is None else ((AUTH_KEY, f"Bearer {self.token}"),)

    def check(self) -> None:
        """Read the TLS files now (a CLI checks its flags before it connects)."""
        if self.uses_tls:
            self.credentials()


PLAINTEXT = ChannelSecurity()


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ChannelSecurityError(f"cannot read the {what} file {str(path)!r}: "
                                   f"{exc.strerror or exc}") from exc


def open_channel(target: str, options: ChannelOptions,
                 security: ChannelSecurity | None = None) -> grpc.Channel:
    """A blocking channel to `target`, with TLS and the token as `security` says."""
    sec = security or PLAINTEXT
    opts = [*options, *sec.options()]
    if sec.uses_tls:
        channel = grpc.secure_channel(target, sec.credentials(), options=opts)
    else:
        channel = grpc.insecure_channel(target, options=opts)
    if sec.token is None:
        return channel
    return grpc.intercept_channel(channel, _SyncToken(sec.metadata()))


def open_aio_channel(target: str, options: ChannelOptions,
                     security: ChannelSecurity | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` (create it inside the running event loop)."""
    sec = security or PLAINTEXT
    opts = [*options, *sec.options()]
    interceptors = None if sec.token is None else _aio_token_interceptors(sec.metadata())
    if sec.uses_tls:
        return grpc.aio.secure_channel(target, sec.credentials(), options=opts,
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)


def _merged(metadata: Any, extra: tuple[tuple[str, str], ...]) -> list[tuple[str, Any]]:
    return [*(tuple(m) for m in (metadata or ())), *extra]


class _SyncDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _CallDetails(_SyncDetails, grpc.ClientCallDetails):  # type: ignore[misc]
    pass


class _SyncToken(grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
                 grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
                 grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
                 grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Adds the token to every call of a blocking channel."""

    def __init__(self, extra: tuple[tuple[str, str], ...]) -> None:
        self.extra = extra

    def _details(self, d: Any) -> _CallDetails:
        return _CallDetails(d.method, d.timeout, _merged(d.metadata, self.extra), d.credentials,
                            getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def _aio_details(d: Any, extra: tuple[tuple[str, str], ...]) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(d.method, d.timeout,
                                      grpc.aio.Metadata(*_merged(d.metadata, extra)),
                                      d.credentials, d.wait_for_ready)


class _AioToken:
    def __init__(self, extra: tuple[tuple[str, str], ...]) -> None:
        self.extra = extra

    def _details(self, d: Any) -> grpc.aio.ClientCallDetails:
        return _aio_details(d, self.extra)


# One class per call kind: grpc.aio files an interceptor under the first kind it implements.
class _AioUnaryUnary(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioUnaryStream(_AioToken, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any,
                                     request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioStreamUnary(_AioToken, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _AioStreamStream(_AioToken, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def _aio_token_interceptors(extra: tuple[tuple[str, str], ...]) -> list[Any]:
    return [kind(extra) for kind in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary,
                                     _AioStreamStream)]
