"""Server configuration: YAML file, then environment (`DETSERVE_*`), then CLI flags.

Precedence is flags > env > file > defaults. Every validation error names the field and the value
it got (config_values.py parses each value; ConfigError is re-exported here). Model package
paths that are relative are resolved against the config file's directory; `builtin:<dir>` names
a package shipped inside `detserve.models` (`models/packages/<dir>`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from detserve.server.alerts_config import AlertsConfig, AlertsConfigError, parse_alerts
from detserve.server.batching_config import BatchingConfig
from detserve.server.config_values import (
    ConfigError,
    as_bool,
    as_float,
    as_int,
    as_mapping,
    as_str,
    check_keys,
    optional_port,
    unset,
)

__all__ = [
    "DEFAULT_CONFIG", "STREAM_POLICIES", "ConfigError", "ModelConfig", "ServerConfig",
    "env_overrides", "load_config", "load_file", "parse_batching", "parse_config",
    "parse_model", "resolve_package", "validate",
]

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
BUILTIN_PREFIX = "builtin:"
STREAM_POLICIES = ("block", "latest")
ENV_PREFIX = "DETSERVE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class ModelConfig:
    """One served model. `name`/`variant` of None fall back to the manifest (name, input size);
    `engine` None is the package's own (engines.manifest.default_engine_kind: OpenVINO for an
    IR, else ONNX Runtime).

    `max_batch_size_given` says the batching's max_batch_size was chosen (a YAML field or a
    flag): above what the model takes it is an error. The default one is lowered to the model's
    limit instead, so a fixed-batch export serves without a config file."""

    package: Path
    name: str | None = None
    variant: str | None = None
    engine: str | None = None
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    default: bool = False
    max_batch_size_given: bool = False


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 50051
    max_message_bytes: int = 16 * 1024 * 1024
    # Decoded-pixel limit, checked from the image header before decoding (bomb guard).
    max_pixels: int = 40_000_000
    metrics_port: int | None = None  # 0 = ephemeral, None = no Prometheus endpoint
    # The Open Inference Protocol over HTTP/JSON (server/oip/rest.py); 0 = ephemeral, None = off.
    rest_port: int | None = None
    stream_policy: str = "block"
    # `block` policy: frames of one stream being processed at once before reading stops.
    stream_max_in_flight: int = 4
    drain_grace_s: float = 10.0
    # Connections older than this are closed (GOAWAY, then `max_connection_age_grace_s` for calls
    # in flight) so clients re-resolve and spread over replicas that joined since; 0 = never.
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 10.0
    # Admission (admission.py): gRPC's own limit on calls in progress (streams count once), the
    # decode threads (None: one per CPU core), decoded pixels in flight across the server, and
    # stream frames held across all streams.
    max_concurrent_rpcs: int = 1024
    decode_threads: int | None = None
    max_pixels_in_flight: int = 80_000_000
    stream_max_frames_held: int = 256
    # A JPEG at least twice the model input is decoded at 1/2, 1/4 or 1/8 by DCT scaling
    # (benchmarks/decode_map.py: val mAP unchanged); false decodes in full, for bit-parity with
    # a reference pipeline that resizes the full image.
    jpeg_reduced_decode: bool = True
    log_requests: bool = True
    log_level: str = "INFO"
    # Front-end processes sharing the port, feeding one engine process (server/workers);
    # 1: everything in this one process.
    workers: int = 1
    # Security (README "Security"; server/security.py): TLS when tls_cert_file is set (then no
    # plaintext port); mutual TLS, client certificates required, with tls_client_ca_file;
    # bearer tokens from auth_token_file (re-read when it changes) or auth_tokens
    # ($DETSERVE_AUTH_TOKENS, kept out of repr); requests/s per token, or per peer without
    # auth (0 = off).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    auth_token_file: Path | None = None
    auth_tokens: str | None = field(default=None, repr=False)
    reflection: bool = True
    rate_limit_rps: float = 0.0
    rate_limit_burst: int | None = None  # None: one second's worth
    # The server's own alerts on what its models return: dead cameras, distribution shift
    # (the `alerts:` section; server/alerts_config.py, README "Monitoring").
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    models: tuple[ModelConfig, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def decode_thread_count(self) -> int:
        """`decode_threads`, else the CPUs this process may run on (a container's or taskset's
        limit, where os.cpu_count() would report the whole host)."""
        if self.decode_threads:
            return self.decode_threads
        affinity = getattr(os, "sched_getaffinity", None)
        return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


SCALAR_FIELDS = tuple(f.name for f in fields(ServerConfig) if f.name not in ("models", "alerts"))


def resolve_package(value: Any, base_dir: Path, where: str) -> Path:
    """A package path from the config: `builtin:<dir>`, absolute, or relative to `base_dir`."""
    if not isinstance(value, str | Path) or not str(value):
        raise ConfigError(f"config field '{where}' must be a path, got {value!r}")
    text = str(value)
    if text.startswith(BUILTIN_PREFIX):
        import detserve.models

        name = text[len(BUILTIN_PREFIX) :]
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"config field '{where}' names a bad builtin package: {text!r}")
        return Path(detserve.models.__file__).parent / "packages" / name
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


SECURITY_PATHS = ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_token_file")
SECURITY_FIELDS = (*SECURITY_PATHS, "auth_tokens", "reflection", "rate_limit_rps",
                   "rate_limit_burst")


def _security_scalar(name: str, value: Any) -> Any:
    """Paths are taken as given (relative ones from the working directory); the files are read
    at start (server/security.py)."""
    if name in SECURITY_PATHS:
        return None if unset(value) else Path(as_str(str(value), name)).expanduser()
    if name == "reflection":
        return as_bool(value, name)
    if name == "auth_tokens":  # never echoed: the value is secret
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigError("config field 'auth_tokens' must be a string of tokens")
        return value
    if name == "rate_limit_rps":
        return 0.0 if unset(value) else as_float(value, name, 0.0)
    return None if unset(value) else as_int(value, name, 1)  # rate_limit_burst


def parse_batching(raw: Any, where: str) -> BatchingConfig:
    raw = as_mapping(raw, where)
    keys = ("max_batch_size", "max_queue_delay_ms", "preferred_batch_sizes", "max_queue_size",
            "instances", "max_queue_wait_ms", "adaptive_window")
    check_keys(raw, keys, f"'{where}'")
    d = BatchingConfig()
    max_batch = as_int(raw.get("max_batch_size", d.max_batch_size), f"{where}.max_batch_size", 1)
    preferred = raw.get("preferred_batch_sizes", list(d.preferred_batch_sizes)) or []
    if not isinstance(preferred, list):
        raise ConfigError(
            f"config field '{where}.preferred_batch_sizes' must be a list, got {preferred!r}"
        )
    sizes = tuple(
        as_int(p, f"{where}.preferred_batch_sizes", 1, max_batch) for p in preferred
    )
    delay_ms = as_float(
        raw.get("max_queue_delay_ms", d.max_queue_delay_s * 1000), f"{where}.max_queue_delay_ms",
        0.0,
    )
    wait_raw = raw.get("max_queue_wait_ms")
    wait_ms = None if wait_raw is None else as_float(wait_raw, f"{where}.max_queue_wait_ms", 0.0)
    try:
        return BatchingConfig(
            max_queue_wait_s=wait_ms / 1000.0 if wait_ms else None,  # 0 or null: no bound
            adaptive_window=as_bool(raw.get("adaptive_window", d.adaptive_window),
                                  f"{where}.adaptive_window"),
            max_batch_size=max_batch,
            max_queue_delay_s=delay_ms / 1000.0,
            preferred_batch_sizes=sizes,
            max_queue_size=as_int(raw.get("max_queue_size", d.max_queue_size),
                                f"{where}.max_queue_size", 1),
            instances=as_int(raw.get("instances", d.instances), f"{where}.instances", 1),
        )
    except ValueError as exc:
        raise ConfigError(f"config field '{where}': {exc}") from exc


def parse_model(raw: Any, where: str, base_dir: Path) -> ModelConfig:
    raw = as_mapping(raw, where)
    keys = ("name", "variant", "package", "engine", "engine_options", "batching", "default")
    check_keys(raw, keys, f"'{where}'")
    if "package" not in raw:
        raise ConfigError(f"config field '{where}.package' is required but missing")
    name = raw.get("name")
    variant = raw.get("variant")
    if name is not None and ("@" in str(name) or not str(name)):
        raise ConfigError(f"config field '{where}.name' must be non-empty without '@', "
                          f"got {name!r}")
    if variant is not None and ("@" in str(variant) or not str(variant)):
        raise ConfigError(f"config field '{where}.variant' must be non-empty without '@', "
                          f"got {variant!r}")
    engine = raw.get("engine")
    batching = raw.get("batching")
    return ModelConfig(
        package=resolve_package(raw["package"], base_dir, f"{where}.package"),
        name=None if name is None else str(name),
        variant=None if variant is None else str(variant),
        engine=None if engine is None else as_str(engine, f"{where}.engine"),
        engine_options=dict(as_mapping(raw.get("engine_options"), f"{where}.engine_options")),
        batching=parse_batching(batching, f"{where}.batching"),
        default=as_bool(raw.get("default", False), f"{where}.default"),
        max_batch_size_given=isinstance(batching, Mapping) and "max_batch_size" in batching,
    )


def _scalar(name: str, value: Any) -> Any:
    where = name
    if name in SECURITY_FIELDS:
        return _security_scalar(name, value)
    if name == "host":
        return as_str(value, where)
    if name == "port":
        return as_int(value, where, 0, 65535)
    if name in ("metrics_port", "rest_port"):
        return optional_port(value, where)
    if name in ("max_message_bytes", "max_pixels", "max_pixels_in_flight", "max_concurrent_rpcs",
                "stream_max_in_flight", "stream_max_frames_held", "workers"):
        return as_int(value, where, 1)
    if name == "decode_threads":
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "auto")):
            return None
        return as_int(value, where, 1)
    if name in ("drain_grace_s", "max_connection_age_s", "max_connection_age_grace_s"):
        return as_float(value, where, 0.0)
    if name in ("log_requests", "jpeg_reduced_decode"):
        return as_bool(value, where)
    if name == "log_level":
        if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"config field 'log_level' must be one of {list(LOG_LEVELS)}, got {value!r}"
            )
        return value.upper()
    if name == "stream_policy":
        if value not in STREAM_POLICIES:
            raise ConfigError(
                f"config field 'stream_policy' must be one of {list(STREAM_POLICIES)}, "
                f"got {value!r}"
            )
        return value
    raise ConfigError(f"unknown config field {name!r}; allowed: {sorted(SCALAR_FIELDS)}")


def parse_config(raw: Any, base_dir: Path) -> ServerConfig:
    """Validate a config mapping (as read from YAML)."""
    raw = as_mapping(raw, "<top level>")
    check_keys(raw, (*SCALAR_FIELDS, "models", "alerts"), "file")
    scalars = {k: _scalar(k, v) for k, v in raw.items() if k not in ("models", "alerts")}
    try:
        alerts = parse_alerts(raw.get("alerts"))
    except AlertsConfigError as exc:
        raise ConfigError(str(exc)) from exc
    models_raw = raw.get("models") or []
    if not isinstance(models_raw, list):
        raise ConfigError(f"config field 'models' must be a list, got {models_raw!r}")
    models = tuple(parse_model(m, f"models[{i}]", base_dir) for i, m in enumerate(models_raw))
    return ServerConfig(models=models, alerts=alerts, **scalars)


def load_file(path: Path) -> ServerConfig:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:  # found by fuzzing (tests/fuzz)
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: nested too "
                          f"deeply") from exc
    return parse_config(raw or {}, path.parent.resolve())


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """`DETSERVE_<FIELD>` values for the scalar fields (DETSERVE_CONFIG is read by the caller)."""
    found = {}
    for name in SCALAR_FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            found[name] = _scalar(name, env[key]) if name != "host" else env[key]
    return found


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    models: Sequence[ModelConfig] = (),
) -> ServerConfig:
    """The effective config: file (`path`, else $DETSERVE_CONFIG, else default.yaml), then env,
    then `overrides` (CLI flags; None values are ignored). `models`, if given, replace the
    file's."""
    env = env or {}
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"])
    config = load_file(path if path is not None else DEFAULT_CONFIG)
    updates = env_overrides(env)
    for name, value in (overrides or {}).items():
        if value is not None:
            updates[name] = _scalar(name, value)
    config = replace(config, **updates)
    if models:
        config = replace(config, models=tuple(models))
    return validate(config)


def validate(config: ServerConfig) -> ServerConfig:
    """Whole-config checks: at least one model, at most one default."""
    if not config.models:
        raise ConfigError("config field 'models' must list at least one model, got []")
    if config.max_pixels > config.max_pixels_in_flight:
        raise ConfigError(
            f"config field 'max_pixels_in_flight' ({config.max_pixels_in_flight}) must be at "
            f"least max_pixels ({config.max_pixels}), or no image at the limit could be decoded"
        )
    defaults = [i for i, m in enumerate(config.models) if m.default]
    if len(defaults) > 1:
        raise ConfigError(
            f"config field 'models[*].default' may be true for one model only, "
            f"got models {defaults}"
        )
    return config
