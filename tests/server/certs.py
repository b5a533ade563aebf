"""Real X.509 certificates for TLS tests, made with `cryptography` (EC P-256, valid for a day).

`make_pki(folder)` writes a CA, a server certificate for localhost and 127.0.0.1, a client
certificate from the same CA, and a second CA with a client certificate of its own (the
"wrong" one a server must refuse), all as PEM files.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path
    wrong_client_cert: Path
    wrong_client_key: Path
    named_server_cert: Path  # made out to detserve.test only (no IP, no localhost)
    named_server_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _builder(subject: str, issuer: x509.Name, key: Key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _ca(common: str) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(common, _name(common), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(common: str, ca: x509.Certificate, ca_key: Key, server: bool,
          names: list[x509.GeneralName]) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(common, ca.subject, key)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(folder: Path, stem: str, cert: x509.Certificate, key: Key | None) -> Path:
    path = folder / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("detserve test CA")
    wrong, wrong_key = _ca("some other CA")
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server, server_key = _leaf("localhost", ca, ca_key, True, local)
    named, named_key = _leaf("detserve.test", ca, ca_key, True, [x509.DNSName("detserve.test")])
    client, client_key = _leaf("camera-7", ca, ca_key, False, [])
    stranger, stranger_key = _leaf("camera-7", wrong, wrong_key, False, [])
    _write(folder, "server", server, server_key)
    _write(folder, "named", named, named_key)
    _write(folder, "client", client, client_key)
    _write(folder, "stranger", stranger, stranger_key)
    return Pki(
        ca=_write(folder, "ca", ca, None),
        server_cert=folder / "server.pem", server_key=folder / "server.key",
        client_cert=folder / "client.pem", client_key=folder / "client.key",
        wrong_ca=_write(folder, "wrong_ca", wrong, None),
        wrong_client_cert=folder / "stranger.pem", wrong_client_key=folder / "stranger.key",
        named_server_cert=folder / "named.pem", named_server_key=folder / "named.key",
    )
