"""The clients and CLIs against servers with TLS, mutual TLS and tokens, over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from detserve.client import ChannelSecurity
from detserve.client.bench.cli import main as bench_main
from detserve.client.bench.resultsdoc import load_document
from detserve.client.cli import main as client_main
from detserve.client.cli_output import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from detserve.client.client import AsyncDetectClient, DetectClient
from detserve.client.results import DetectError
from detserve.client.security import ChannelSecurityError

from ..server.certs import Pki, make_pki
from .conftest import ThreadedServer, blocks_image, config_for, png_bytes

TOKEN = "tok-" + "a" * 28
BLUE_PNG = png_bytes(blocks_image(64, 64, [(0, 32, 2)]))
BLUE = [("blue", [0.0, 32.0, 32.0, 64.0])]


def found(result: Any) -> list[tuple[str, list[float]]]:
    return [(d.label, list(d.bbox)) for d in result.detections]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_server(tiny_package: Path, pki: Pki) -> Iterator[ThreadedServer]:
    """TLS with the test CA's localhost certificate, and one token."""
    srv = ThreadedServer(replace(config_for(tiny_package), tls_cert_file=pki.server_cert,
                                 tls_key_file=pki.server_key, auth_tokens=TOKEN))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mtls_server(tiny_package: Path, pki: Pki) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(replace(config_for(tiny_package), tls_cert_file=pki.server_cert,
                                 tls_key_file=pki.server_key, tls_client_ca_file=pki.ca))
    yield srv
    srv.stop()


def test_blocking_client_with_tls_and_a_token(secure_server: ThreadedServer, pki: Pki) -> None:
    security = ChannelSecurity(ca_file=pki.ca, token=TOKEN)
    with DetectClient(secure_server.target, timeout_s=10, security=security) as client:
        assert found(client.detect(BLUE_PNG)) == BLUE
        assert [found(r) for r in client.stream([BLUE_PNG, BLUE_PNG])] == [BLUE, BLUE]
        assert client.list_models().default_model == "blocks@64"
        assert client.model_info().name == "blocks@64"
    no_token = ChannelSecurity(ca_file=pki.ca)
    with (DetectClient(secure_server.target, timeout_s=10, security=no_token) as client,
          pytest.raises(DetectError) as info):
        client.detect(BLUE_PNG)
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in repr(security)


async def test_async_client_with_tls_and_a_token(secure_server: ThreadedServer, pki: Pki) -> None:
    security = ChannelSecurity(ca_file=pki.ca, token=TOKEN)
    async with AsyncDetectClient(secure_server.target, timeout_s=10, security=security) as client:
        assert found(await client.detect(BLUE_PNG)) == BLUE
        assert [found(r) async for r in client.stream([BLUE_PNG] * 3)] == [BLUE] * 3
        assert (await client.list_models()).default_model == "blocks@64"
    async with AsyncDetectClient(secure_server.target, timeout_s=10) as client:
        with pytest.raises(DetectError) as info:  # plaintext against the TLS port
            await client.detect(BLUE_PNG)
    assert info.value.code is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_client_certificate(mtls_server: ThreadedServer, pki: Pki) -> None:
    mine = ChannelSecurity(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    with DetectClient(mtls_server.target, timeout_s=10, security=mine) as client:
        assert found(client.detect(BLUE_PNG)) == BLUE
    for security in (ChannelSecurity(ca_file=pki.ca),
                     ChannelSecurity(ca_file=pki.ca, cert_file=pki.wrong_client_cert,
                                     key_file=pki.wrong_client_key)):
        with (DetectClient(mtls_server.target, timeout_s=10, security=security) as client,
              pytest.raises(DetectError) as info):
            client.detect(BLUE_PNG)
        assert info.value.code is grpc.StatusCode.UNAVAILABLE


def test_server_name_override_for_a_certificate_made_out_to_a_dns_name(
    tiny_package: Path, pki: Pki
) -> None:
    srv = ThreadedServer(replace(config_for(tiny_package), tls_cert_file=pki.named_server_cert,
                                 tls_key_file=pki.named_server_key))
    try:
        named = ChannelSecurity(ca_file=pki.ca, server_name="detserve.test")
        with DetectClient(srv.target, timeout_s=10, security=named) as client:
            assert found(client.detect(BLUE_PNG)) == BLUE
    finally:
        srv.stop()


def test_channel_security_mistakes_are_named(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ChannelSecurityError, match="needs both cert_file and key_file"):
        ChannelSecurity(cert_file=pki.client_cert)
    with pytest.raises(ChannelSecurityError, match="without whitespace"):
        ChannelSecurity(token="two words")
    missing = tmp_path / "ca.pem"
    with pytest.raises(ChannelSecurityError, match=f"cannot read the CA file '{missing}'"):
        ChannelSecurity(ca_file=missing).check()
    assert ChannelSecurity(server_name="x").uses_tls and not ChannelSecurity(token=TOKEN).uses_tls


def test_detserve_client_flags_and_token_variable(
    secure_server: ThreadedServer, pki: Pki, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "blue.png"
    image.write_bytes(BLUE_PNG)
    tls = ["--target", secure_server.target, "--ca-file", str(pki.ca)]
    monkeypatch.setenv("DETSERVE_TOKEN", TOKEN)
    assert client_main(["detect", str(image), "--json", *tls]) == EXIT_OK
    line = json.loads(capsys.readouterr().out)
    assert [(d["label"], d["bbox"]) for d in line["detections"]] == BLUE
    monkeypatch.delenv("DETSERVE_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    assert client_main(["models", "--token-file", str(token_file), *tls]) == EXIT_OK
    assert "blocks@64" in capsys.readouterr().out
    assert client_main(["models", *tls]) == EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: UNAUTHENTICATED") and len(err.splitlines()) == 1
    # Connection failures say what to check: TLS for a plaintext client, the CA for a handshake.
    assert client_main(["models", "--target", secure_server.target]) == EXIT_UNAVAILABLE
    assert "a server with TLS needs --ca-file or --tls" in capsys.readouterr().err
    assert client_main(["models", "--target", secure_server.target, "--ca-file",
                        str(pki.wrong_ca)]) == EXIT_UNAVAILABLE
    assert "the TLS handshake failed: check --ca-file" in capsys.readouterr().err
    missing = tmp_path / "nope.pem"
    assert client_main(["models", "--target", secure_server.target, "--ca-file",
                        str(missing), "--token", TOKEN]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        f"error: cannot read the CA file '{missing}': No such file or directory")


def test_detserve_bench_run_with_tls_and_a_token(
    secure_server: ThreadedServer, pki: Pki, blocks_folder: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "secure.json"
    code = bench_main(["run", "--target", secure_server.target, "--ca-file", str(pki.ca),
                       "--token", TOKEN, "--mode", "closed", "--concurrency", "1",
                       "--warmup-s", "0.1", "--duration-s", "0.3", "--inputs", str(blocks_folder),
                       "--input-count", "2", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    (setting,) = load_document(out)["settings"]
    (level,) = setting["levels"]
    assert level["ok"] > 0 and level["errors"] == {}
    assert setting["model"] == "blocks@64"  # GetModelInfo passed the guard too
    assert bench_main(["run", "--target", secure_server.target, "--cert-file",
                       str(pki.client_cert), "--out", str(out)]) == 2
    assert "needs both cert_file and key_file" in capsys.readouterr().err
