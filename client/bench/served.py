"""The served default configuration as benchmark settings.

Benchmarks measure what `detserve-server` serves when started without a config: the default
model entry of server/default.yaml (the one with `default: true`): its package, name, variant,
engine, engine options and batching, plus the top-level fields that shape serving (stream
policy, admission limits, ...). The YAML is read as written, not through the server's parser,
so a field the server gains later travels into the generated config without a change here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from detserve.client.bench.server_proc import BatchSetting

# Top-level fields every benchmark sets itself (loopback address, a free port, metrics only
# where a script reads them, no per-request log lines that would cost the server CPU).
BENCH_OWNED = ("host", "port", "metrics_port", "log_requests", "models")
_ENTRY_KEYS = ("package", "name", "variant", "engine", "engine_options")


def default_config_path() -> Path:
    from detserve.server.config import DEFAULT_CONFIG

    return DEFAULT_CONFIG


@dataclass(frozen=True)
class ServedDefault:
    model: dict[str, Any]  # models[] entry without batching/default
    batching: dict[str, Any]  # the entry's `batching:` mapping, as written
    server: dict[str, Any] = field(default_factory=dict)  # top-level fields, minus BENCH_OWNED
    source: str = ""

    @property
    def engine(self) -> str:
        return str(self.model.get("engine", "onnxruntime"))

    @property
    def engine_options(self) -> dict[str, Any]:
        return dict(self.model.get("engine_options") or {})

    def setting(self) -> BatchSetting:
        return BatchSetting.from_yaml(self.batching)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "batching": self.batching, "server": self.server,
                "source": self.source}


def default_entry(raw: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """The models[] entry with `default: true`; the first entry when none is marked."""
    models = raw.get("models") or []
    if not isinstance(models, list) or not models:
        raise ValueError(f"{where}: 'models' must be a non-empty list, got {models!r}")
    marked = [m for m in models if isinstance(m, Mapping) and m.get("default") is True]
    entry = marked[0] if marked else models[0]
    if not isinstance(entry, Mapping) or "package" not in entry:
        raise ValueError(f"{where}: the default model entry needs a 'package', got {entry!r}")
    return entry


def parse_served(raw: Any, where: str = "<config>") -> ServedDefault:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: a server config must be a mapping, got {type(raw).__name__}")
    entry = default_entry(raw, where)
    model = {k: entry[k] for k in _ENTRY_KEYS if k in entry}
    model["engine_options"] = dict(entry.get("engine_options") or {})
    server = {k: v for k, v in raw.items() if k not in BENCH_OWNED}
    return ServedDefault(model, dict(entry.get("batching") or {}), server, where)


def load_served_default(path: Path | None = None) -> ServedDefault:
    """The served default of `path` (default: the packaged server/default.yaml)."""
    path = path or default_config_path()
    return parse_served(yaml.safe_load(path.read_text()), str(path))


def parse_engine_options(text: str | None) -> dict[str, Any] | None:
    """`--engine-options` JSON (an object), or None when the flag was not given."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--engine-options must be a JSON object, got {text!r}: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"--engine-options must be a JSON object, got {text!r}")
    return value


def with_overrides(served: ServedDefault, package: str | None = None, engine: str | None = None,
                   engine_options: Mapping[str, Any] | None = None) -> ServedDefault:
    """The served default with flag overrides applied.

    Another package drops the entry's name and variant (they label the default's package; the
    server then takes them from the manifest). Another engine kind drops the engine options
    (they are that engine's constructor arguments) unless options are given too."""
    model = dict(served.model)
    if package is not None and package != model.get("package"):
        model["package"] = package
        model.pop("name", None)
        model.pop("variant", None)
    if engine is not None and engine != model.get("engine"):
        model["engine"] = engine
        model["engine_options"] = {}
    if engine_options is not None:
        model["engine_options"] = dict(engine_options)
    return replace(served, model=model)


def override_batching(setting: BatchSetting, max_batch_size: int | None = None,
                      max_queue_delay_ms: float | None = None, instances: int | None = None,
                      max_queue_wait_ms: float | None = None) -> BatchSetting:
    """`setting` with the given (non-None) fields replaced, e.g. from script flags."""
    changes: dict[str, Any] = {"max_batch_size": max_batch_size,
                               "max_queue_delay_ms": max_queue_delay_ms, "instances": instances,
                               "max_queue_wait_ms": max_queue_wait_ms}
    return replace(setting, **{k: v for k, v in changes.items() if v is not None})
