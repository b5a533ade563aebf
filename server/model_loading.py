"""A served model's engines from its config: the package loaded, the batching fitted to what the
model takes, the engine kind resolved, the options its constructor takes by name, and one
warm-up run per batch size before it serves. Failures are ConfigErrors naming the field."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from detserve.engines.base import Engine
from detserve.engines.manifest import (
    ManifestError,
    ModelPackage,
    default_engine_kind,
    load_package,
)
from detserve.engines.warmup import warm_up
from detserve.server.batching_config import BatchingConfig
from detserve.server.config import ConfigError, ModelConfig

EngineFactory = Callable[[ModelPackage, str, Mapping[str, Any]], Engine]


def default_engine_factory(package: ModelPackage, kind: str, options: Mapping[str, Any]) -> Engine:
    from detserve.engines.factory import create_engine

    return create_engine(package, kind, options)


def engine_class(kind: str) -> Callable[..., Any] | None:
    """The constructor behind an engine kind, or None where it is unknown or cannot import
    (create_engine then reports that, naming the kind)."""
    from detserve.engines.factory import ENGINE_KINDS

    if kind not in ENGINE_KINDS:
        return None
    module_name, class_name = ENGINE_KINDS[kind]
    try:
        constructor: Callable[..., Any] = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return None
    return constructor


def batch_sizes_for(batching: BatchingConfig) -> tuple[int, ...]:
    """The batch sizes an engine with one artefact per size (a CUDA graph) should build: powers
    of two below the maximum, the preferred sizes and the maximum. A batch runs padded up to the
    next one, so small batches stay cheap and no size the batcher forms is left out."""
    top = batching.max_batch_size
    powers = {1 << i for i in range(top.bit_length()) if 1 << i < top}
    return tuple(sorted(powers | set(batching.preferred_batch_sizes) | {top}))


def engine_options(
    cfg: ModelConfig, constructor: Callable[..., Any] | None
) -> dict[str, Any]:
    """`cfg.engine_options`, plus the batching settings the engine's constructor takes by name
    and the options do not set: engines that build per-batch-size artefacts (TensorRT
    optimization profiles, CUDA graphs) must build them for the batches this server forms."""
    options = dict(cfg.engine_options)
    if constructor is None:
        return options
    batching = cfg.batching
    derived: dict[str, Any] = {
        "max_batch_size": batching.max_batch_size,
        "preferred_batch_sizes": list(batching.preferred_batch_sizes),
        "batch_sizes": list(batch_sizes_for(batching)),  # torch-cuda: one CUDA graph each
    }
    accepted = inspect.signature(constructor).parameters
    for name, value in derived.items():
        if name in accepted and name not in options:
            options[name] = value
    return options


@dataclass(frozen=True)
class Loaded:
    """A model's engines and its effective config: the engine kind resolved from the package
    where none was named, the batching fitted to what the model takes."""

    config: ModelConfig
    engines: list[Engine]
    lowered_from: int | None = None  # the default max_batch_size the model could not take


def fit_batching(cfg: ModelConfig, limit: int, where: str) -> ModelConfig:
    """`cfg` with max_batch_size at most `limit` (the model's input.max_batch_size): a chosen
    size above it is an error, the default one is lowered to it."""
    b = cfg.batching
    if b.max_batch_size <= limit:
        return cfg
    if cfg.max_batch_size_given:
        raise ConfigError(
            f"config field '{where}.batching.max_batch_size' is {b.max_batch_size}, "
            f"above the model's input.max_batch_size {limit}; the model takes batches of at "
            f"most {limit} (--max-batch-size or batching.max_batch_size {limit} or less)"
        )
    sizes = tuple(p for p in b.preferred_batch_sizes if p <= limit)
    return replace(cfg, batching=replace(b, max_batch_size=limit, preferred_batch_sizes=sizes))


def load_model(index: int, cfg: ModelConfig, factory: EngineFactory) -> Loaded:
    """`config.models[index]`'s package and engines; ConfigError naming the field that fails."""
    where = f"models[{index}]"
    try:
        package = load_package(cfg.package)
    except ManifestError as exc:
        raise ConfigError(f"config field '{where}.package' ({cfg.package}): {exc}") from exc
    fitted = fit_batching(cfg, package.manifest.max_batch_size, where)
    kind = cfg.engine or default_engine_kind(package.manifest)
    fitted = replace(fitted, engine=kind)
    options = engine_options(fitted, engine_class(kind))
    try:
        engines = [factory(package, kind, options) for _ in range(fitted.batching.instances)]
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(
            f"config field '{where}.engine' ({kind!r}, options "
            f"{options}) could not create an engine: {exc}"
        ) from exc
    lowered = cfg.batching.max_batch_size if fitted.batching != cfg.batching else None
    return Loaded(fitted, engines, lowered)


def warm_model(where: str, cfg: ModelConfig, engines: Sequence[Engine]) -> tuple[int, ...]:
    """One run of each batch size every engine will run (its compiled sizes, else the sizes
    the batcher forms), before the model is served."""
    ran: tuple[int, ...] = ()
    for engine in engines:
        try:
            ran = warm_up(engine, batch_sizes_for(cfg.batching))
        except Exception as exc:  # any engine failure on zeros means the model cannot serve
            raise ConfigError(
                f"config field '{where}' ({cfg.package}): the {cfg.engine} engine failed its "
                f"warm-up run: {exc}"
            ) from exc
    return ran


