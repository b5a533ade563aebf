"""A real server serving a package on OpenVINO, configured from YAML as a user would.

GetModelInfo must say which engine and precision serve the model: bf16 where the CPU has it, and
f32 with the fallback note where it does not (the capability check forced off).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from detserve.engines import openvino as openvino_engine
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import start_server
from detserve.server.config import ConfigError, load_config

from .conftest import blocks_image, boxes_of, request_for

pytest.importorskip("openvino")

GREEN = blocks_image(64, 64, [(32, 32, 1)])


def _yaml(package: Path, precision: str) -> str:
    return f"""
host: 127.0.0.1
port: 0
models:
  - package: {package}
    engine: openvino
    engine_options: {{precision: {precision}, num_threads: 1}}
    batching: {{max_batch_size: 4, max_queue_delay_ms: 0}}
"""


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    """`await serve(yaml_text)` -> a stub of a real server started from that config file."""
    stops: list[Any] = []

    async def _serve(text: str) -> pb_grpc.DetectorStub:
        path = tmp_path / "server.yaml"
        path.write_text(text)
        server = await start_server(load_config(path))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stops.append((server, channel))
        return pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]

    yield _serve
    for server, channel in stops:
        await channel.close()
        await server.stop(grace_s=1.0)


def _cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in openvino_engine.cpu_capabilities(ov.Core(), "CPU")


async def test_serves_bf16_and_says_so(serve: Callable[[str], Any], tiny_package: Path) -> None:
    stub = await serve(_yaml(tiny_package, "bf16"))
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.engine == "openvino"
    if _cpu_has_bf16():
        assert info.precision == "bf16"
        assert info.metadata["openvino_precision"] == "bf16"
        assert "precision_note" not in info.metadata
    else:
        assert info.precision == "fp32"
        assert "does not report BF16" in info.metadata["precision_note"]
    reply = await stub.Detect(request_for(GREEN))
    [(label, score, box)] = boxes_of(reply)
    assert label == "green" and score > 0.99
    assert box == pytest.approx([32.0, 32.0, 64.0, 64.0], abs=0.5)  # bf16: 8-bit mantissa


async def test_bf16_fallback_is_reported(
    serve: Callable[[str], Any], tiny_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CPU without BF16, forced: the capability check answers without it; the rest is real.
    monkeypatch.setattr(openvino_engine, "cpu_capabilities", lambda core, device: ["FP32"])
    stub = await serve(_yaml(tiny_package, "bf16"))
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.engine, info.precision) == ("openvino", "fp32")
    assert info.metadata["openvino_precision"] == "f32"
    assert info.metadata["precision_note"] == (
        "bf16 requested but this CPU does not report BF16; running f32"
    )
    reply = await stub.Detect(request_for(GREEN))
    assert boxes_of(reply) == [("green", 1.0, [32.0, 32.0, 64.0, 64.0])]


@pytest.mark.parametrize(
    ("precision", "message"),
    [
        ("fp64", r"models\[0\]\.engine.*'openvino'.*precision must be one of .* got 'fp64'"),
        ("int8", r"models\[0\]\.engine.*'openvino'.*'int8' needs an INT8 package"),
    ],
)
async def test_bad_precision_fails_at_startup(
    serve: Callable[[str], Any], tiny_package: Path, precision: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        await serve(_yaml(tiny_package, precision))
