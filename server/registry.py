"""The served models: per `name@variant` its engines (one per batcher instance), batcher, manifest.

A batch's run on an engine is engine_pool.py's; loading and warming a model's engines is
model_loading.py's (both re-exported here, where callers have imported them from).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from detserve.engines.base import Engine
from detserve.engines.manifest import Manifest
from detserve.server.admission import InServer, ModelAdmission, ServiceTimes
from detserve.server.batcher import Batcher
from detserve.server.config import ConfigError, ModelConfig, ServerConfig
from detserve.server.engine_pool import BatchItem, EnginePool, ItemResult, run_on_engine
from detserve.server.errors import RequestError, clip, fault_detail
from detserve.server.logs import get_logger
from detserve.server.model_loading import (
    EngineFactory,
    Loaded,
    batch_sizes_for,
    default_engine_factory,
    engine_class,
    engine_options,
    fit_batching,
    load_model,
    warm_model,
)

__all__ = [
    "BatchItem", "EngineFactory", "EnginePool", "ItemResult", "Loaded", "ModelRegistry",
    "ServedModel", "batch_sizes_for", "default_engine_factory", "engine_class",
    "engine_options", "fit_batching", "run_on_engine",
]


def _log() -> Any:
    # Fetched per use: a logger bound at import would keep the logging setup of that moment,
    # not the one serve() configures.
    return get_logger("detserve.server.registry")


@dataclass
class ServedModel:
    key: str  # "name@variant"
    name: str
    variant: str
    config: ModelConfig
    manifest: Manifest  # of the engines: what preprocessing and the reply use
    engine_kind: str
    pool: EnginePool
    batcher: Batcher[BatchItem, ItemResult]
    admission: ModelAdmission
    is_default: bool = False
    # Batch sizes each engine ran once before the model was served (engines/warmup.py).
    warmed_batch_sizes: tuple[int, ...] = ()


FaultListener = Callable[[str, BaseException], None]


class ModelRegistry:
    """Resolves request model strings to served models and owns their lifecycles.

    A batcher that goes out of service (a worker died, batcher.py) is logged as
    `batcher_failed` and reported to the `on_fault` listeners (the server's health)."""

    def __init__(self, models: Sequence[ServedModel], drain_grace_s: float | None = None) -> None:
        self.models = {m.key: m for m in models}
        self.default = next(m for m in models if m.is_default)
        self.drain_grace_s = drain_grace_s  # what bounds stop(drain=True) by default
        self._fault_listeners: list[FaultListener] = []
        for model in models:
            model.batcher.on_fault = functools.partial(self._faulted, model.key)

    def on_fault(self, listener: FaultListener) -> None:
        """Call `listener(model key, error)` when a model's batcher goes out of service."""
        self._fault_listeners.append(listener)

    def _faulted(self, key: str, exc: BaseException) -> None:
        _log().error("batcher_failed", model=key, error=fault_detail(exc),
                     message=f"{key} is out of service: a batcher worker died; its requests "
                     f"get UNAVAILABLE and health reports NOT_SERVING")  # fmt: skip
        for listener in self._fault_listeners:
            listener(key, exc)

    @classmethod
    async def start(
        cls, config: ServerConfig, factory: EngineFactory = default_engine_factory
    ) -> ModelRegistry:
        served: list[ServedModel] = []
        try:
            for index, cfg in enumerate(config.models):
                loaded = await asyncio.to_thread(load_model, index, cfg, factory)
                model = _served(loaded.config, loaded.engines, config)
                served.append(model)
                if sum(m.key == model.key for m in served) > 1:
                    raise ConfigError(
                        f"config field 'models[{index}]' serves {model.key!r} a second time"
                    )
                if loaded.lowered_from is not None:
                    _log_lowered(model, loaded.lowered_from)
                started = time.monotonic()
                model.warmed_batch_sizes = await asyncio.to_thread(
                    warm_model, f"models[{index}]", model.config, model.pool.engines)
                _log().info("warmed_up", model=model.key,
                            batch_sizes=list(model.warmed_batch_sizes),
                            engines=len(model.pool.engines),
                            ms=round((time.monotonic() - started) * 1000.0, 1))
                await model.batcher.start()
        except BaseException:
            await _stop_all(served, drain=False)
            raise
        if not any(m.is_default for m in served):
            served[0].is_default = True
        return cls(served, config.drain_grace_s)

    def resolve(self, model: str) -> ServedModel:
        """"" -> server default; "name@variant" exactly; "name" -> that name's default variant."""
        if not model:
            return self.default
        found = self.models.get(model)
        if found is None and "@" not in model:
            named = [m for m in self.models.values() if m.name == model]
            found = next((m for m in named if m.is_default), named[0] if named else None)
        if found is None:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {clip(model)!r}; served models: {sorted(self.models)}",
            )
        return found

    async def stop(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop every model's batcher at once, then close its engines. Bounded by `timeout_s`
        (default: the config's drain_grace_s): past it queued requests fail and an engine run
        still going is abandoned, so a hung engine cannot hold a shutdown."""
        bound = self.drain_grace_s if timeout_s is None else timeout_s
        await _stop_all(list(self.models.values()), drain, bound)


def _variant_of(manifest: Manifest) -> str:
    w, h = manifest.input_width, manifest.input_height
    return str(w) if w == h else f"{w}x{h}"


def _served(cfg: ModelConfig, engines: list[Engine], server: ServerConfig) -> ServedModel:
    manifest = engines[0].manifest
    name = cfg.name or manifest.name
    variant = cfg.variant or _variant_of(manifest)
    pool = EnginePool(engines)
    key = f"{name}@{variant}"
    b = cfg.batching
    # Admission estimates waits from the batch times the batcher observes.
    times = ServiceTimes(b.max_batch_size)
    # Stream frames are bounded by the shared stream slots, not by max_queue_size.
    queue_limit = b.max_queue_size + server.stream_max_frames_held
    counts = InServer()
    batcher = Batcher(pool.run_batch, b, name=key, queue_limit=queue_limit,
                      on_batch=times.observe_batch,
                      # The next admitted request still decoding, or decoded and on its way.
                      coming=(lambda: counts.expected_arrival(times.decode_s or 0.0))
                      if b.adaptive_window else None,
                      batch_time_s=times.batch_time_s,
                      # Refusing now means the engine is the bottleneck (see batch_choice).
                      shedding=lambda: counts.refused_within(
                          2 * times.batch_time_s(b.max_batch_size)))
    admission = ModelAdmission(key, b, server.decode_thread_count, batcher, times, counts)
    return ServedModel(
        key=key,
        name=name,
        variant=variant,
        config=cfg,
        manifest=manifest,
        engine_kind=engines[0].kind,
        pool=pool,
        batcher=batcher,
        admission=admission,
        is_default=cfg.default,
    )


def _log_lowered(model: ServedModel, default_size: int) -> None:
    size = model.config.batching.max_batch_size
    _log().warning(
        "batching_limited", model=model.key, package=str(model.config.package),
        max_batch_size=size,
        message=f"{model.key}: the model takes batches of at most {size} (manifest "
        f"input.max_batch_size, e.g. a fixed-batch export), so batches are limited to {size} "
        f"instead of the default {default_size}",
    )  # fmt: skip


async def _stop_one(model: ServedModel, drain: bool, timeout_s: float | None) -> None:
    if not await model.batcher.stop(drain=drain, timeout_s=timeout_s):
        # Its engines may still be running a batch: closing them under it could crash.
        _log().error("drain_timeout", model=model.key, timeout_s=timeout_s,
                     message=f"{model.key}: a batch was still in its engine after {timeout_s} s; "
                     f"abandoned, its requests failed with UNAVAILABLE")  # fmt: skip
        return
    await asyncio.to_thread(model.pool.close)


async def _stop_all(models: Sequence[ServedModel], drain: bool,
                    timeout_s: float | None = None) -> None:
    """Every model at once: one slow model's drain does not add to another's."""
    results = await asyncio.gather(*(_stop_one(m, drain, timeout_s) for m in models),
                                   return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
