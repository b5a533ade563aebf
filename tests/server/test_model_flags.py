"""`detserve-server --model` with batching flags, and the engine taken from the package.

The flags go through the command line's own parser and model builder, and a real server on
loopback must then report the batching it was given.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import start_server
from detserve.server.cli import build_parser, flag_models
from detserve.server.cli import main as server_main
from detserve.server.config import ConfigError, ModelConfig, load_config

from .conftest import blocks_image, boxes_of, request_for

LOOPBACK = {"host": "127.0.0.1", "port": 0, "metrics_port": None, "log_requests": False}


def _models(*argv: str) -> list[ModelConfig]:
    return flag_models(build_parser().parse_args(list(argv)))


def test_batching_flags_apply_to_every_model_flag(tiny_package: Path) -> None:
    a, b = _models("--model", f"a={tiny_package}", "--model", f"b={tiny_package}",
                   "--max-batch-size", "2", "--max-queue-delay-ms", "5")
    for m in (a, b):
        assert (m.batching.max_batch_size, m.batching.max_queue_delay_s) == (2, 0.005)
        assert m.max_batch_size_given and m.engine is None  # engine: the package's own
    (delay_only,) = _models("--model", str(tiny_package), "--max-queue-delay-ms", "0")
    assert delay_only.batching.max_queue_delay_s == 0.0
    assert not delay_only.max_batch_size_given  # the default size may still be lowered
    (plain,) = _models("--model", str(tiny_package))
    assert plain.batching.max_batch_size == 8 and not plain.max_batch_size_given


def test_bad_batching_flags_are_one_line_errors(
    tiny_package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"max_batch_size' must be an integer >= 1, got 0"):
        _models("--model", str(tiny_package), "--max-batch-size", "0")
    with pytest.raises(ConfigError, match=r"max_queue_delay_ms' must be a number >= 0.0"):
        _models("--model", str(tiny_package), "--max-queue-delay-ms", "-1")
    assert server_main(["--max-batch-size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["detserve-server: error: --engine, --max-batch-size and --max-queue-delay-ms "
                   "apply to --model packages; set engine and batching in the config file for "
                   "its models"]


async def test_server_serves_with_the_flag_batching(tiny_package: Path) -> None:
    models = _models("--model", f"blocks={tiny_package}", "--max-batch-size", "2",
                     "--max-queue-delay-ms", "5")
    server = await start_server(load_config(None, {}, LOOPBACK, models))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            info = await stub.GetModelInfo(pb.GetModelInfoRequest())
            reply = await stub.Detect(request_for(blocks_image(64, 64, [(0, 0, 0)])))
        assert (info.batching.max_batch_size, info.batching.max_queue_delay_ms) == (2, 5.0)
        assert info.engine == "onnxruntime"
        assert boxes_of(reply) == [("red", 1.0, [0.0, 0.0, 32.0, 32.0])]
    finally:
        await server.stop(grace_s=1.0)


async def test_an_openvino_ir_package_serves_on_openvino_without_engine_flag() -> None:
    pytest.importorskip("openvino")
    (model,) = _models("--model", "builtin:shapes_320_int8", "--max-batch-size", "1")
    server = await start_server(load_config(None, {}, LOOPBACK, [model]))
    try:
        served = server.registry.default
        assert (served.engine_kind, served.config.engine) == ("openvino", "openvino")
        assert served.manifest.precision == "int8"
    finally:
        await server.stop(grace_s=1.0)
