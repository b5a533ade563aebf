"""Server configuration: file, environment and flags, and errors that name field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import detserve.models
from detserve.server.batcher import BatchingConfig
from detserve.server.cli import parse_model_flag
from detserve.server.config import DEFAULT_CONFIG, ConfigError, ModelConfig, load_config
from detserve.server.registry import ModelRegistry

from .conftest import server_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return path


MODEL = "models:\n  - package: pkg\n"


def test_file_values_and_relative_package_paths(tmp_path: Path) -> None:
    path = write(tmp_path, """
port: 6000
metrics_port: 0
stream_policy: latest
models:
  - name: blocks
    variant: small
    package: ../packages/blocks
    engine_options: {intra_op_threads: 1}
    batching: {max_batch_size: 4, max_queue_delay_ms: 5, preferred_batch_sizes: [4, 2]}
  - package: /abs/pkg
    default: true
""")
    config = load_config(path, env={})
    assert (config.port, config.metrics_port, config.stream_policy) == (6000, 0, "latest")
    assert config.host == "0.0.0.0" and config.max_message_bytes == 16 * 1024 * 1024
    first, second = config.models
    assert first.package == (tmp_path / "../packages/blocks").resolve()
    assert (first.name, first.variant, first.default) == ("blocks", "small", False)
    assert first.engine_options == {"intra_op_threads": 1}
    assert first.batching == BatchingConfig(max_batch_size=4, max_queue_delay_s=0.005,
                                            preferred_batch_sizes=(2, 4))
    assert (second.package, second.name, second.default) == (Path("/abs/pkg"), None, True)


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 1000\n" + MODEL)
    env = {"DETSERVE_PORT": "2000", "DETSERVE_METRICS_PORT": "off", "DETSERVE_MAX_PIXELS": "99"}
    assert load_config(path, env={}).port == 1000
    assert load_config(path, env=env).port == 2000
    flagged = load_config(path, env=env, overrides={"port": 3000, "max_pixels": None})
    assert (flagged.port, flagged.max_pixels, flagged.metrics_port) == (3000, 99, None)
    assert load_config(write(tmp_path, MODEL), env={}).port == 50051


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 7777\n" + MODEL)
    assert load_config(None, env={"DETSERVE_CONFIG": str(path)}).port == 7777


def test_default_config_serves_builtin_shapes_variants() -> None:
    config = load_config(None, env={})
    assert DEFAULT_CONFIG.name == "default.yaml"
    packages = Path(detserve.models.__file__).parent / "packages"
    assert [(m.name, m.variant, m.package, m.engine, m.default) for m in config.models] == [
        ("shapes", "320", packages / "shapes_320_int8", "openvino", True),
        ("shapes", "640", packages / "shapes_640_int8", "openvino", False),
        ("shapes", "320-fp32", packages / "shapes_320", "onnxruntime", False),
        ("shapes", "640-fp32", packages / "shapes_640", "onnxruntime", False),
    ]
    # The options benchmarks/openvino/RESULTS.md chose; compiled sizes that a formed batch can
    # be planned over without padding far above it (issue 12).
    assert dict(config.models[0].engine_options) == {
        "num_threads": 2, "num_streams": 1, "performance_hint": "LATENCY",
        "static_batch_sizes": [1, 2, 4, 8], "precision": "int8", "pixel_input": True}
    assert config.models[1].engine_options["static_batch_sizes"] == [1, 2, 4]
    assert [m.batching.max_batch_size for m in config.models] == [8, 4, 8, 4]
    assert [m.batching.max_queue_wait_s for m in config.models] == [0.4, 0.5, 0.4, 0.5]


def test_cli_model_flag() -> None:
    spec = parse_model_flag("blocks@64=/models/blocks", "openvino")
    assert (spec.name, spec.variant, spec.package, spec.engine) == (
        "blocks", "64", Path("/models/blocks"), "openvino")
    bare = parse_model_flag("builtin:shapes_320", "onnxruntime")
    assert (bare.name, bare.variant, bare.package.parts[-2:]) == (
        None, None, ("packages", "shapes_320"))


@pytest.mark.parametrize(("text", "env", "words"), [
    ("port: abc\n" + MODEL, {}, ("'port'", "'abc'")),
    (MODEL, {"DETSERVE_PORT": "-1"}, ("'port'", "-1")),
    ("stream_policy: newest\n" + MODEL, {}, ("'stream_policy'", "'newest'", "latest")),
    ("prot: 1\n" + MODEL, {}, ("unknown field(s) ['prot']",)),
    ("port: 1\n", {}, ("'models'", "at least one")),
    ("models:\n  - name: x\n", {}, ("'models[0].package'", "missing")),
    ("models:\n  - package: p\n    batching: {max_batch_size: 0}\n", {},
     ("'models[0].batching.max_batch_size'", "0")),
    ("models:\n  - package: p\n    batching: {max_batch_size: 2, preferred_batch_sizes: [4]}\n",
     {}, ("'models[0].batching.preferred_batch_sizes'", "4")),
    ("models:\n  - package: p\n    batching: {max_queue_delay_ms: -1}\n", {},
     ("'models[0].batching.max_queue_delay_ms'", "-1")),
    ("models:\n  - package: p\n    batching: {instance: 2}\n", {}, ("['instance']",)),
    ("models:\n  - {package: p, default: true}\n  - {package: q, default: true}\n", {},
     ("default", "[0, 1]")),
    ("models:\n  - {package: p, name: a@b}\n", {}, ("'models[0].name'", "'a@b'")),
    ("models:\n  - package: 'builtin:../etc'\n", {}, ("'models[0].package'", "builtin:../etc")),
    ("port: [1\n", {}, ("not valid YAML",)),
    ("models:\n  - package: p\n    batching: {max_queue_wait_ms: -5}\n", {},
     ("'models[0].batching.max_queue_wait_ms'", "-5")),
    ("max_pixels_in_flight: 1000\n" + MODEL, {}, ("'max_pixels_in_flight' (1000)", "max_pixels")),
    ("decode_threads: 0\n" + MODEL, {}, ("'decode_threads'", "0")),
    ("models:\n  - package: p\n    batching: {adaptive_window: maybe}\n", {},
     ("'models[0].batching.adaptive_window'", "'maybe'")),
    (MODEL, {"DETSERVE_STREAM_MAX_FRAMES_HELD": "0"}, ("'stream_max_frames_held'", "0")),
    ("max_concurrent_rpcs: none\n" + MODEL, {}, ("'max_concurrent_rpcs'", "'none'")),
])
def test_errors_name_field_and_value(
    tmp_path: Path, text: str, env: dict[str, str], words: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env=env)
    for word in words:
        assert word in str(err.value), f"{word!r} not in {err.value}"


def test_admission_fields_parse_with_units_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
decode_threads: 3
max_pixels_in_flight: 90000000
stream_max_frames_held: 64
max_concurrent_rpcs: 300
models:
  - package: pkg
    batching: {max_queue_wait_ms: 150}
  - package: pkg2
    batching: {max_queue_wait_ms: 0}
""")
    config = load_config(path)
    assert (config.decode_threads, config.decode_thread_count) == (3, 3)
    assert (config.max_pixels_in_flight, config.stream_max_frames_held,
            config.max_concurrent_rpcs) == (90_000_000, 64, 300)
    assert [m.batching.max_queue_wait_s for m in config.models] == [0.15, None]  # 0 = no bound
    auto = load_config(write(tmp_path, MODEL), env={"DETSERVE_DECODE_THREADS": "auto"})
    assert auto.decode_threads is None and auto.decode_thread_count >= 1


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize(("change", "words"), [
    ({"package": Path("/no/such/package")}, ("'models[0].package'", "/no/such/package")),
    ({"engine": "warp-drive"}, ("'models[0].engine'", "'warp-drive'", "onnxruntime")),
    ({"engine_options": {"threads": 2}}, ("'models[0].engine'", "threads")),
    ({"batching": BatchingConfig(max_batch_size=65), "max_batch_size_given": True},
     ("'models[0].batching.max_batch_size'", "65", "64")),
])
async def test_model_errors_at_start_name_field_and_value(
    tiny_package: Path, change: dict[str, Any], words: tuple[str, ...]
) -> None:
    model = ModelConfig(**{"package": tiny_package, **change})
    with pytest.raises(ConfigError) as err:
        await ModelRegistry.start(server_config(model))
    for word in words:
        assert word in str(err.value), f"{word!r} not in {err.value}"


async def test_same_model_twice_is_an_error(tiny_package: Path) -> None:
    model = ModelConfig(package=tiny_package)
    with pytest.raises(ConfigError, match=r"models\[1\]' serves 'blocks@64' a second time"):
        await ModelRegistry.start(server_config(model, model))
