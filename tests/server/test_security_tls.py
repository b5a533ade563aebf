"""Server TLS and mutual TLS over loopback, with certificates made in the test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import start_server
from detserve.server.config import ConfigError, ServerConfig
from detserve.server.tls import server_credentials

from .certs import Pki, make_pki
from .conftest import WAIT_S, blocks_image, blocks_model, boxes_of, request_for, server_config

BLUE = blocks_image(64, 64, [(0, 32, 2)])
BLUE_BOXES = [("blue", 1.0, [0.0, 32.0, 32.0, 64.0])]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(package: Path, pki: Pki, **fields: Any) -> ServerConfig:
    return server_config(blocks_model(package), tls_cert_file=pki.server_cert,
                         tls_key_file=pki.server_key, **fields)


def tls_channel(port: int, ca: Path, cert: Path | None = None, key: Path | None = None,
                host: str = "127.0.0.1", options: tuple[tuple[str, str], ...] = ()
                ) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(f"{host}:{port}", creds, options=list(options))


async def detect_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """OK with the blue block's box, or the status the call failed with."""
    stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
    try:
        reply = await stub.Detect(request_for(BLUE), timeout=WAIT_S)
    except grpc.aio.AioRpcError as err:
        return err.code()
    finally:
        await channel.close()
    assert boxes_of(reply) == BLUE_BOXES
    return grpc.StatusCode.OK


async def test_tls_answers_tls_clients_and_refuses_plaintext(
    start: Callable[..., Any], tiny_package: Path, pki: Pki
) -> None:
    run = await start(tls_config(tiny_package, pki))
    port = run.server.port
    assert run.server.security.tls
    assert await detect_code(tls_channel(port, pki.ca)) is grpc.StatusCode.OK
    assert await detect_code(tls_channel(port, pki.ca, host="localhost")) is grpc.StatusCode.OK
    # There is no plaintext port: a plaintext client's handshake fails on the TLS one.
    plain = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    assert await detect_code(plain) is grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA refuses the server's certificate.
    assert await detect_code(tls_channel(port, pki.wrong_ca)) is grpc.StatusCode.UNAVAILABLE


async def test_health_answers_over_tls(
    start: Callable[..., Any], tiny_package: Path, pki: Pki
) -> None:
    run = await start(tls_config(tiny_package, pki))
    channel = tls_channel(run.server.port, pki.ca)
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT_S)
    await channel.close()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_mutual_tls_requires_a_client_certificate_from_its_ca(
    start: Callable[..., Any], tiny_package: Path, pki: Pki
) -> None:
    run = await start(tls_config(tiny_package, pki, tls_client_ca_file=pki.ca))
    port = run.server.port
    ok = tls_channel(port, pki.ca, pki.client_cert, pki.client_key)
    assert await detect_code(ok) is grpc.StatusCode.OK
    assert await detect_code(tls_channel(port, pki.ca)) is grpc.StatusCode.UNAVAILABLE
    stranger = tls_channel(port, pki.ca, pki.wrong_client_cert, pki.wrong_client_key)
    assert await detect_code(stranger) is grpc.StatusCode.UNAVAILABLE


async def test_certificate_for_a_dns_name_reached_by_ip_with_a_name_override(
    start: Callable[..., Any], tiny_package: Path, pki: Pki
) -> None:
    config = server_config(blocks_model(tiny_package), tls_cert_file=pki.named_server_cert,
                           tls_key_file=pki.named_server_key)
    run = await start(config)
    port = run.server.port
    # The certificate names detserve.test, not 127.0.0.1: refused unless told the name.
    assert await detect_code(tls_channel(port, pki.ca)) is grpc.StatusCode.UNAVAILABLE
    named = tls_channel(port, pki.ca, options=(("grpc.ssl_target_name_override",
                                                "detserve.test"),))
    assert await detect_code(named) is grpc.StatusCode.OK


def test_tls_file_mistakes_are_config_errors_naming_the_field(
    tmp_path: Path, tiny_package: Path, pki: Pki
) -> None:
    base = tls_config(tiny_package, pki)
    cases: list[tuple[ServerConfig, str]] = [
        (replace(base, tls_key_file=None), "'tls_cert_file' is set but 'tls_key_file' is not"),
        (replace(base, tls_cert_file=None), "'tls_key_file' is set but 'tls_cert_file' is not"),
        (replace(base, tls_cert_file=tmp_path / "nope.pem"), "'tls_cert_file': cannot read"),
        # The key of another certificate.
        (replace(base, tls_key_file=pki.client_key), "matching private key"),
        (replace(base, tls_client_ca_file=pki.server_key), "no PEM CA certificate"),
        (replace(base, tls_cert_file=None, tls_key_file=None, tls_client_ca_file=pki.ca),
         "'tls_client_ca_file' is set but TLS is off"),
    ]
    for config, expected in cases:
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
            server_credentials(config)
    assert server_credentials(replace(base, tls_cert_file=None, tls_key_file=None)) is None


async def test_bad_tls_file_fails_the_start_before_any_model_loads(
    tmp_path: Path, pki: Pki
) -> None:
    loaded: list[str] = []

    def factory(*args: Any) -> Any:
        loaded.append("engine")
        raise AssertionError("no engine should be built")

    # The model package does not even exist: the TLS check comes first.
    config = replace(tls_config(tmp_path / "no-package", pki),
                     tls_key_file=tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="'tls_key_file': cannot read"):
        await start_server(config, factory)
    assert loaded == []
