"""The served default as benchmark settings: read from the packaged server/default.yaml it
agrees with the server's own parser; flags override parts of it; the generated config serves
(a real server subprocess), and the raw-engine baseline builds the served default's engine."""

from __future__ import annotations

from pathlib import Path

import grpc.aio
import pytest

from detserve.client.bench.baseline import engine_choice, raw_engine_baseline
from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.served import (
    load_served_default,
    override_batching,
    parse_engine_options,
    parse_served,
    with_overrides,
)
from detserve.client.bench.server_proc import ServerProcess, free_port, server_config
from detserve.client.bench.sweep import resolve_package
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.config import DEFAULT_CONFIG, load_file


def test_the_served_default_matches_the_servers_reading_of_default_yaml() -> None:
    served = load_served_default()
    (default,) = [m for m in load_file(DEFAULT_CONFIG).models if m.default]
    assert resolve_package(served.model["package"], DEFAULT_CONFIG.parent) == default.package
    assert served.engine == default.engine and served.engine_options == default.engine_options
    setting, b = served.setting(), default.batching
    assert (setting.max_batch_size, setting.instances, setting.max_queue_size) == \
        (b.max_batch_size, b.instances, b.max_queue_size)
    assert setting.max_queue_delay_ms == pytest.approx(b.max_queue_delay_s * 1000.0)
    assert (served.model.get("name"), served.model.get("variant")) == (default.name,
                                                                      default.variant)
    assert not {"host", "port", "metrics_port", "log_requests", "models"} & set(served.server)
    assert served.server["stream_policy"] == load_file(DEFAULT_CONFIG).stream_policy


CUSTOM = {
    "host": "0.0.0.0", "port": 1, "metrics_port": 9, "log_requests": True,
    "stream_policy": "latest", "max_concurrent_rpcs": 64, "decode_threads": 3,
    "models": [
        {"name": "a", "package": "builtin:x", "engine": "onnxruntime"},
        {"name": "b", "variant": "v", "package": "builtin:y", "engine": "openvino",
         "engine_options": {"num_streams": 2}, "default": True,
         "batching": {"max_batch_size": 4, "max_queue_delay_ms": 3, "max_queue_wait_ms": 25,
                      "new_field": [1, 2]}},
    ],
}


def test_new_batching_and_server_fields_travel_unchanged() -> None:
    served = parse_served(CUSTOM)
    assert served.model == {"name": "b", "variant": "v", "package": "builtin:y",
                            "engine": "openvino", "engine_options": {"num_streams": 2}}
    assert served.server == {"stream_policy": "latest", "max_concurrent_rpcs": 64,
                             "decode_threads": 3}
    batching = served.setting().to_yaml()
    assert (batching["max_queue_wait_ms"], batching["new_field"]) == (25.0, [1, 2])
    assert served.setting().name == "b4_d3ms_i1_w25ms"


def test_flags_override_the_served_default() -> None:
    served = parse_served(CUSTOM)
    other_pkg = with_overrides(served, package="/tmp/pkg")
    assert other_pkg.model == {"package": "/tmp/pkg", "engine": "openvino",
                               "engine_options": {"num_streams": 2}}  # name/variant dropped
    other_engine = with_overrides(served, engine="onnxruntime")
    assert other_engine.model["engine_options"] == {}
    both = with_overrides(served, engine="onnxruntime",
                          engine_options=parse_engine_options('{"intra_op_threads": 1}'))
    assert both.model["engine_options"] == {"intra_op_threads": 1}
    assert parse_engine_options(None) is None
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse_engine_options("[1]")
    flagged = override_batching(served.setting(), max_batch_size=2, instances=None)
    assert (flagged.max_batch_size, flagged.instances, flagged.max_queue_wait_ms) == (2, 1, 25.0)


async def test_the_generated_served_default_config_serves(tmp_path: Path) -> None:
    served = load_served_default()
    model = {**served.model, "package": str(resolve_package(served.model["package"], Path()))}
    proc = ServerProcess(server_config(model, served.setting(), free_port(), served.server),
                         tmp_path, "served")
    (request,) = build_requests(load_inputs(InputSpec("synthetic", 1, 96, 64)).images)
    await proc.start(120.0)
    try:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.Detect(request, timeout=30)
    finally:
        proc.stop()
    assert reply.batch_size == 1 and reply.timing.inference_ms > 0
    assert reply.model.startswith(str(served.model.get("name", "")))


def test_raw_baseline_defaults_to_the_served_default_engine() -> None:
    served = load_served_default()
    assert engine_choice(None, None) == (served.engine, served.engine_options)
    assert engine_choice("onnxruntime", None) == ("onnxruntime", {})
    images = load_inputs(InputSpec("synthetic", 2, 96, 64)).images
    package = resolve_package(served.model["package"], Path())
    (one, two) = raw_engine_baseline(package, images, [1, 2], duration_s=0.05)
    assert (one.batch_size, two.batch_size) == (1, 2)
    assert one.pipeline_images_per_s > 0 and two.infer_images_per_s > 0
