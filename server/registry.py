"""The served models: per `name@variant` its engines (one per batcher instance), batcher, manifest.

`run_batch` runs in a batcher worker thread: it takes a free engine, stacks the batch, runs the
engine and decodes the outputs with the engine's own manifest (an engine may change the output
format, e.g. GPU NMS engines emit end2end). A decode failure fails only its item; an engine
failure raises, so the batcher fails that batch (INTERNAL) and lives on.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from detserve.engines.base import DecodeParams, Engine, Letterbox
from detserve.engines.batch_plan import executed_batch_size
from detserve.engines.decode import decode_batch
from detserve.engines.detections import Detections
from detserve.engines.manifest import (
    Manifest,
    ManifestError,
    ModelPackage,
    default_engine_kind,
    load_package,
)
from detserve.engines.pipeline import infer_pixels
from detserve.engines.warmup import warm_up
from detserve.server.admission import InServer, ModelAdmission, ServiceTimes
from detserve.server.batcher import Batcher
from detserve.server.batching_config import BatchingConfig
from detserve.server.config import ConfigError, ModelConfig, ServerConfig
from detserve.server.errors import RequestError, clip, fault_detail
from detserve.server.logs import get_logger

EngineFactory = Callable[[ModelPackage, str, Mapping[str, Any]], Engine]


def _log() -> Any:
    # Fetched per use: a logger bound at import would keep the logging setup of that moment,
    # not the one serve() configures.
    return get_logger("detserve.server.registry")


def default_engine_factory(package: ModelPackage, kind: str, options: Mapping[str, Any]) -> Engine:
    from detserve.engines.factory import create_engine

    return create_engine(package, kind, options)


@dataclass(frozen=True)
class BatchItem:
    """One prepared image waiting for the engine."""

    pixels: npt.NDArray[np.uint8]  # [H, W, 3] letterboxed, in the manifest's colour order
    letterbox: Letterbox
    params: DecodeParams


@dataclass(frozen=True)
class ItemResult:
    detections: Detections
    inference_s: float  # engine run of the whole batch
    postprocess_s: float  # output decoding of the whole batch
    executed_batch_size: int  # images the engine computed for the batch: formed size + padding


class EnginePool:
    """Engines shared by the batcher's worker threads: each run borrows a free one."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine, got 0")
        self.engines = list(engines)
        self._free: queue.SimpleQueue[Engine] = queue.SimpleQueue()
        for engine in self.engines:
            self._free.put(engine)

    def run_batch(self, items: list[BatchItem]) -> list[ItemResult | Exception]:
        engine = self._free.get()
        try:
            return run_on_engine(engine, items)
        finally:
            self._free.put(engine)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


def _decode_each(
    outputs: Sequence[npt.NDArray[Any]], manifest: Manifest, items: Sequence[BatchItem]
) -> list[Detections | Exception]:
    """Decode item by item, so one bad item does not fail its neighbours."""
    results: list[Detections | Exception] = []
    for i, item in enumerate(items):
        try:
            sliced = [out[i : i + 1] for out in outputs]
            results.append(decode_batch(sliced, manifest, [item.letterbox], [item.params])[0])
        except Exception as exc:
            results.append(exc)
    return results


def run_on_engine(engine: Engine, items: list[BatchItem]) -> list[ItemResult | Exception]:
    batch = np.stack([item.pixels for item in items])
    start = time.perf_counter()
    outputs = infer_pixels(engine, batch)  # raising here fails the whole batch: INTERNAL
    inferred = time.perf_counter()
    manifest = engine.manifest
    decoded: list[Detections | Exception]
    try:
        decoded = list(decode_batch(
            outputs, manifest, [i.letterbox for i in items], [i.params for i in items]
        ))
    except Exception:
        decoded = _decode_each(outputs, manifest, items)
    post_s = time.perf_counter() - inferred
    infer_s = inferred - start
    executed = executed_batch_size(engine, len(items))
    return [
        d if isinstance(d, Exception) else ItemResult(d, infer_s, post_s, executed)
        for d in decoded
    ]


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


def _variant_of(manifest: Manifest) -> str:
    w, h = manifest.input_width, manifest.input_height
    return str(w) if w == h else f"{w}x{h}"


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


def _load(index: int, cfg: ModelConfig, factory: EngineFactory) -> Loaded:
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


def _warm(where: str, cfg: ModelConfig, engines: Sequence[Engine]) -> tuple[int, ...]:
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
                loaded = await asyncio.to_thread(_load, index, cfg, factory)
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
                    _warm, f"models[{index}]", model.config, model.pool.engines)
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
                      # Admitted, not yet queued nor running: decoding, or decoded and on its
                      # way to submit (counting only decodes missed that step's gap).
                      coming=(lambda: counts.held - batcher.queue_depth() - batcher.running_items)
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
