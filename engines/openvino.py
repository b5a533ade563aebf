"""OpenVINO engine for CPUs: FP32, BF16 (where the CPU has it) and INT8 packages.

One compiled model is shared by every engine object made from the same package and settings, and
each engine object (one per server instance) owns its own infer request, so instances overlap:
`InferRequest.infer` releases the GIL while OpenVINO runs.

Batch dimension: one dynamic-batch model by default. `static_batch_sizes` compiles one model per
listed size instead, and a batch runs as the cheapest sequence of those sizes (engines/batch_plan:
a batch of 6 on {1, 2, 4, 8} runs as 4 + 2, or padded to 8 where that measured cheaper; only the
last run is zero-padded and the padding's outputs are dropped). The cost of one run of each size
is measured at start-up, or given as `plan_costs_ms`.

Input: float32 [B, 3, H, W] by default. With `pixel_input`, the compiled models take the uint8
[B, H, W, 3] canvases the server prepares and normalise them in the graph (PrePostProcessor:
convert, mean/scale, NHWC to NCHW), which measured outputs identical to the float path and saves
the host a float copy of every image; `infer` on floats then compiles the float models on first
use (evaluation tools), so a server holds one compiled model per size.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detserve.engines.batch_plan import BatchPlan, plan_batches, split_rows
from detserve.engines.manifest import Manifest, ModelPackage
from detserve.engines.openvino_precision import (
    PRECISIONS,
    PrecisionChoice,
    choose_precision,
    cpu_capabilities,
    float_precision,
    manifest_precision,
)
from detserve.engines.preprocess import pixels_to_tensor

__all__ = ["HINTS", "PRECISIONS", "OpenVinoEngine", "PrecisionChoice", "choose_precision",
           "cpu_capabilities"]

log = logging.getLogger(__name__)

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


_COMPILED: dict[tuple[Any, ...], Any] = {}
_COMPILED_LOCK = threading.Lock()


class OpenVinoEngine:
    """Runs a model package (ONNX, or an OpenVINO IR `.xml` named by `model_file`) on OpenVINO."""

    def __init__(
        self,
        package: ModelPackage,
        precision: str = "auto",
        num_threads: int | None = None,
        num_streams: int | None = None,
        performance_hint: str = "LATENCY",
        cache_dir: str | Path | None = None,
        device: str = "CPU",
        static_batch_sizes: Sequence[int] = (),
        max_batch_size: int | None = None,
        plan_costs_ms: Mapping[int, float] | None = None,
        cpu_pinning: bool | None = None,
        pixel_input: bool = False,
    ) -> None:
        import openvino as ov

        if performance_hint not in HINTS:
            raise ValueError(
                f"openvino performance_hint must be one of {list(HINTS)}, got {performance_hint!r}"
            )
        for name, value in (("num_threads", num_threads), ("num_streams", num_streams)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"openvino {name} must be an integer >= 1, got {value!r}")
        sizes = _check_static_sizes(static_batch_sizes, package.manifest.max_batch_size)
        if not isinstance(pixel_input, bool):
            raise ValueError(f"openvino pixel_input must be true or false, got {pixel_input!r}")
        self._pixels = pixel_input
        core = ov.Core()
        caps = cpu_capabilities(core, device)
        self._choice = choose_precision(precision, package.manifest.precision, caps)
        if self._choice.note:
            log.warning("openvino: %s", self._choice.note)
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": performance_hint,
            "INFERENCE_PRECISION_HINT": float_precision(self._choice.effective),
        }
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = num_threads
        if num_streams is not None:
            config["NUM_STREAMS"] = num_streams
        if cpu_pinning is not None:
            if not isinstance(cpu_pinning, bool):
                raise ValueError(f"openvino cpu_pinning must be true or false, got {cpu_pinning!r}")
            # Pinned inference threads cannot move away from a core that the server's own
            # decode and event-loop threads need, so one preempted thread stalls the batch.
            config["ENABLE_CPU_PINNING"] = cpu_pinning
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        # Static sizes cover any batch (the plan pads or chains them), so the dynamic model is
        # compiled only without them: each compiled model costs tens of MB.
        self._compiled = _compile(core, package, device, config, sizes[0] if sizes else 0,
                                  pixel_input)
        self._request: Any = self._compiled.create_infer_request()
        self._check_input(package.manifest)
        self._static: dict[int, Any] = {
            n: _compile(core, package, device, config, n, pixel_input).create_infer_request()
            for n in sizes
        }
        # The float models of a pixel_input engine, compiled on first use of `infer`.
        self._float_args = (core, package, device, config, sizes)
        self._float: tuple[Any, Any, dict[int, Any]] | None = None
        self._float_lock = threading.Lock()
        self._plan: BatchPlan | None = None
        if sizes:
            top = max_batch_size or package.manifest.max_batch_size
            costs = _costs_s(plan_costs_ms, sizes) or self._measure_costs_s(package.manifest)
            self._plan = plan_batches(costs, top)
        meta = dict(package.manifest.metadata)
        meta["openvino_precision"] = self._choice.effective
        if self._choice.note:
            meta["precision_note"] = self._choice.note
        self._manifest = dataclasses.replace(
            package.manifest, precision=manifest_precision(self._choice.effective), metadata=meta
        )
        self.config = dict(config)
        # Infer-request runs per batch size (warm-up included): what has run, for health checks.
        self.runs_by_size: dict[int, int] = {}
        log.info(
            "openvino: serving %s on %s at %s (requested %s), static batch sizes %s, plan %s",
            package.manifest.name, device, self._choice.effective, precision, list(sizes),
            None if self._plan is None else dict(self._plan.chunks),
        )  # fmt: skip

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def kind(self) -> str:
        return "openvino"

    @property
    def precision(self) -> PrecisionChoice:
        return self._choice

    def _check_input(self, manifest: Manifest) -> None:
        port = self._compiled.inputs[0]
        names = port.get_names()
        if manifest.input_name not in names:
            raise ValueError(
                f"manifest field 'input.name' is {manifest.input_name!r}, but the model's input "
                f"is named {sorted(names)}"
            )

    @property
    def takes_pixels(self) -> bool:
        return self._pixels

    def infer(self, batch: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.generic]]:
        data = np.ascontiguousarray(batch, dtype=np.float32)
        if not self._pixels:
            return self._run(data, self._compiled, self._request, self._static)
        return self._run(data, *self._float_models())

    def infer_pixels(self, batch: npt.NDArray[np.uint8]) -> Sequence[npt.NDArray[np.generic]]:
        """[B, H, W, 3] uint8 canvases in the manifest's colour order."""
        data = np.ascontiguousarray(batch, dtype=np.uint8)
        if not self._pixels:
            return self.infer(pixels_to_tensor(data, self._manifest))
        return self._run(data, self._compiled, self._request, self._static)

    def _float_models(self) -> tuple[Any, Any, dict[int, Any]]:
        with self._float_lock:
            if self._float is None:
                core, package, device, config, sizes = self._float_args
                compiled = _compile(core, package, device, config, sizes[0] if sizes else 0)
                static = {n: _compile(core, package, device, config, n).create_infer_request()
                          for n in sizes}
                self._float = (compiled, compiled.create_infer_request(), static)
            return self._float

    def _run(self, data: npt.NDArray[Any], compiled: Any, request: Any,
             static: dict[int, Any]) -> Sequence[npt.NDArray[np.generic]]:
        if self._plan is None:
            self._count(data.shape[0])
            result = request.infer({0: data}, share_inputs=True)
            return [np.array(result[out]) for out in compiled.outputs]
        n = data.shape[0]
        parts = [self._run_static(data[start:stop], size, static)
                 for start, stop, size in split_rows(n, self.batch_plan(n))]
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]

    def _run_static(self, rows: npt.NDArray[Any], size: int,
                    static: dict[int, Any] | None = None) -> list[npt.NDArray[Any]]:
        n = rows.shape[0]
        if size > n:  # pad with zeros; the padded rows' outputs are dropped below
            rows = np.concatenate([rows, np.zeros((size - n, *rows.shape[1:]), rows.dtype)])
        request = (self._static if static is None else static)[size]
        self._count(size)
        # share_inputs: OpenVINO reads the contiguous batch in place instead of copying it.
        result = request.infer({0: np.ascontiguousarray(rows)}, share_inputs=True)
        return [np.array(result[out][:n]) for out in request.model_outputs]

    def _zeros(self, size: int) -> npt.NDArray[Any]:
        """An all-zero input of `size` images, as the primary compiled models take it."""
        m = self._manifest
        if self._pixels:
            return np.zeros((size, m.input_height, m.input_width, 3), np.uint8)
        return np.zeros((size, 3, m.input_height, m.input_width), np.float32)

    def _count(self, size: int) -> None:
        self.runs_by_size[size] = self.runs_by_size.get(size, 0) + 1

    def warm_up(self, batch_sizes: Sequence[int]) -> tuple[int, ...]:
        """One run of each compiled static size; without static sizes, one run of the dynamic
        model at each of `batch_sizes` (the sizes the server forms)."""
        sizes = self.static_batch_sizes or tuple(sorted(set(batch_sizes)))
        for n in sizes:
            zeros = self._zeros(n)
            if self._plan is None:
                self._run(zeros, self._compiled, self._request, self._static)
            else:
                self._run_static(zeros, n)
        return sizes

    def batch_plan(self, n: int) -> tuple[int, ...]:
        """The compiled sizes a batch of `n` runs as; (n,) on the dynamic model."""
        if self._plan is None:
            return (n,)
        if n > max(self._plan.chunks):
            top = max(self._static)
            full, rest = divmod(n, top)
            return (top,) * full + (self._plan.for_size(rest) if rest else ())
        return self._plan.for_size(n)

    @property
    def plan(self) -> BatchPlan | None:
        return self._plan

    @property
    def static_batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self._static))

    def _measure_costs_s(self, manifest: Manifest, rounds: int = 5) -> dict[int, float]:
        """Seconds per run of each compiled size, on zeros, after one warm-up run each.

        Sizes take turns round by round, so a burst of load elsewhere hits every size alike,
        and the minimum is kept: interference only ever adds time. A larger size is taken to
        cost at least what a smaller one does, so noise cannot make padding look free.
        """
        inputs = {size: self._zeros_for(manifest, size) for size in self._static}
        for size, request in self._static.items():
            request.infer({0: inputs[size]})
        best = dict.fromkeys(self._static, math.inf)
        for _ in range(rounds):
            for size, request in self._static.items():
                start = time.perf_counter()
                request.infer({0: inputs[size]})
                best[size] = min(best[size], time.perf_counter() - start)
        costs, floor = {}, 0.0
        for size in sorted(best):
            floor = max(floor, best[size])
            costs[size] = floor
        return costs

    def _zeros_for(self, manifest: Manifest, size: int) -> npt.NDArray[Any]:
        # Before self._manifest exists (costs are measured in __init__).
        if self._pixels:
            return np.zeros((size, manifest.input_height, manifest.input_width, 3), np.uint8)
        return np.zeros((size, 3, manifest.input_height, manifest.input_width), np.float32)

    def close(self) -> None:
        # The compiled models stay cached for other instances; the requests go with us.
        self._request = None
        self._static = {}
        self._float = None


def _costs_s(costs_ms: Mapping[int, float] | None, sizes: Sequence[int]) -> dict[int, float]:
    """`plan_costs_ms` as seconds per compiled size; {} when not given (measure instead)."""
    if not costs_ms:
        return {}
    given = {int(k): float(v) for k, v in costs_ms.items()}
    if sorted(given) != sorted(sizes):
        raise ValueError(
            f"openvino plan_costs_ms must give a cost for each static batch size {list(sizes)}, "
            f"got sizes {sorted(given)}"
        )
    return {size: ms / 1e3 for size, ms in given.items()}


def _check_static_sizes(sizes: Sequence[int], max_batch: int) -> tuple[int, ...]:
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_batch:
            raise ValueError(
                f"openvino static_batch_sizes must be integers in [1, {max_batch}] "
                f"(the manifest's max_batch_size), got {list(sizes)!r}"
            )
    return tuple(sorted(set(sizes)))


def _compile(
    core: Any, package: ModelPackage, device: str, config: dict[str, Any], batch: int = 0,
    pixels: bool = False,
) -> Any:
    """The compiled model, shared by engines; `batch` > 0 fixes the batch dimension; `pixels`
    gives it a uint8 NHWC input normalised in the graph."""
    key = (
        str(package.model_path.resolve()),
        package.model_path.stat().st_mtime_ns,
        device,
        batch,
        # The normalisation is in a pixel-input graph, so it is part of what was compiled.
        (pixels, package.manifest.preprocess) if pixels else False,
        tuple(sorted((k, str(v)) for k, v in config.items())),
    )
    with _COMPILED_LOCK:
        compiled = _COMPILED.get(key)
        if compiled is None:
            # From the path when possible: with CACHE_DIR set, a cached blob then skips reading
            # and converting the model altogether.
            model: Any = str(package.model_path)
            man = package.manifest
            if batch or pixels:
                model = core.read_model(model)
            if batch:
                model.reshape({0: [batch, 3, man.input_height, man.input_width]})
            if pixels:
                model = _with_pixel_input(model, man)
            compiled = core.compile_model(model, device, config)
            _COMPILED[key] = compiled
        return compiled


def _with_pixel_input(model: Any, manifest: Manifest) -> Any:
    """`model` taking uint8 [B, H, W, 3] (the manifest's colour order) and normalising it as
    engines/preprocess.pixels_to_tensor does: x * (scale / std) - mean / std, which is
    (x - mean / scale) / (std / scale) in the PrePostProcessor's terms."""
    from openvino import Layout, Type
    from openvino.preprocess import PrePostProcessor

    pre = manifest.preprocess
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(Type.u8).set_layout(Layout("NHWC"))
    ppp.input().model().set_layout(Layout("NCHW"))
    steps = ppp.input().preprocess().convert_element_type(Type.f32)
    if any(pre.mean):
        steps.mean([m / pre.scale for m in pre.mean])
    steps.scale([sd / pre.scale for sd in pre.std])
    return ppp.build()
