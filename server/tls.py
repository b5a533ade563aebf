"""Server TLS from the config: certificate and key, and a client CA for mutual TLS.

TLS is on when `tls_cert_file` is set; the server then has no plaintext port at all. With
`tls_client_ca_file` it is mutual: a handshake without a client certificate signed by that CA
fails. There is no "optional client certificate" mode: gRPC Python's only alternative to
"require and verify" is "request but do not verify", which would accept any certificate.

The files are read and checked with the standard `ssl` module before gRPC sees them, so a
missing file, a key that does not match its certificate or a CA file with no certificate is a
ConfigError naming the field, not a failed bind. They are read once, at start: new certificates
take a restart (a drain, see README "Operations").
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from detserve.server.config import ConfigError, ServerConfig


def check_tls_fields(config: ServerConfig) -> None:
    """Fields that only make sense together."""
    cert, key, ca = config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file
    if (cert is None) != (key is None):
        given, missing = ("tls_cert_file", "tls_key_file") if key is None else (
            "tls_key_file", "tls_cert_file")
        raise ConfigError(f"config field '{given}' is set but '{missing}' is not; TLS needs "
                          f"both the certificate chain and its private key")
    if ca is not None and cert is None:
        raise ConfigError("config field 'tls_client_ca_file' is set but TLS is off; mutual TLS "
                          "also needs tls_cert_file and tls_key_file")


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config field '{field}': cannot read {str(path)!r}: "
                          f"{exc.strerror or exc}") from exc


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """The TLS credentials for the gRPC port; None when TLS is off (plaintext)."""
    check_tls_fields(config)
    cert_path, key_path = config.tls_cert_file, config.tls_key_file
    if cert_path is None or key_path is None:
        return None
    cert, key = _read(cert_path, "tls_cert_file"), _read(key_path, "tls_key_file")
    try:
        # A passphrase-protected key fails here instead of prompting on a terminal.
        ssl.create_default_context().load_cert_chain(cert_path, key_path, password=b"")
    except ssl.SSLError as exc:
        raise ConfigError(
            f"config fields 'tls_cert_file' {str(cert_path)!r} and 'tls_key_file' "
            f"{str(key_path)!r}: not a PEM certificate chain and its matching private key "
            f"({exc.reason or exc})"
        ) from exc
    ca_path = config.tls_client_ca_file
    ca = None
    if ca_path is not None:
        ca = _read(ca_path, "tls_client_ca_file")
        try:
            ssl.create_default_context().load_verify_locations(cafile=ca_path)
        except ssl.SSLError as exc:
            raise ConfigError(f"config field 'tls_client_ca_file' {str(ca_path)!r}: no PEM CA "
                              f"certificate in it ({exc.reason or exc})") from exc
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)
