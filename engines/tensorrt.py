"""TensorRT engine (TensorRT 10 Python API): ONNX -> cached serialized engine -> execute_async_v3.

- Build: plugins initialised first (`init_libnvinfer_plugins`, so EfficientNMS_TRT graphs from
  `detserve-model add-nms --target tensorrt` parse), explicit-batch network, builder flags from
  the package precision (FP16; INT8 for Q/DQ packages), one optimization profile per preferred
  batch size (see trt_profiles), a shared timing cache, and an engine cache keyed by ONNX hash +
  TensorRT version + GPU name + precision + profiles + workspace.
- Run: one execution context per profile, flat device buffers sized for max_batch_size, pinned
  host buffers, copies and `execute_async_v3` on the engine's own CUDA stream (torch manages the
  memory and the stream); outputs are sliced back to the real batch.
GPU-free logic lives in `trt_profiles` and is tested on any machine; this module needs tensorrt,
torch with CUDA and a GPU, and says so when one is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detserve.engines.manifest import Manifest, ModelPackage, load_package
from detserve.engines.trt_profiles import (
    BatchProfile,
    EngineCache,
    EngineCacheKey,
    build_profiles,
    file_sha256,
    pad_batch,
    padded_batch_size,
    precision_flags,
    select_profile,
)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "detserve" / "tensorrt"


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(
            f"the tensorrt engine needs NVIDIA TensorRT 10 (pip install tensorrt) and an NVIDIA "
            f"GPU; importing tensorrt failed: {exc}"
        ) from exc
    return trt


def _cuda_device(index: int) -> Any:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "the tensorrt engine needs a CUDA GPU; torch.cuda.is_available() is False"
        )
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(
            f"tensorrt engine option 'device' must be in [0, {torch.cuda.device_count()}), "
            f"got {index}"
        )
    return torch.device("cuda", index)


@dataclass(frozen=True)
class BuildSpec:
    onnx_path: Path
    input_name: str
    chw: tuple[int, int, int]
    flags: tuple[str, ...]
    profiles: tuple[BatchProfile, ...]
    workspace_bytes: int


def build_plan(trt: Any, logger: Any, spec: BuildSpec, timing: bytes | None) -> tuple[bytes, bytes]:
    """Serialized engine and updated timing cache for `spec`."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(spec.onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {spec.onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    for flag in spec.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for p in spec.profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(
            spec.input_name, (p.min, *spec.chw), (p.opt, *spec.chw), (p.max, *spec.chw)
        )
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {spec.onnx_path}")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


@dataclass
class _Tensor:
    name: str
    dtype: np.dtype[Any]
    is_input: bool


class _Context:
    """One execution context (bound to one profile) with its device and pinned host buffers,
    each sized for the largest batch so no call allocates."""

    def __init__(self, engine: Any, index: int, tensors: list[_Tensor], input_name: str,
                 max_input: tuple[int, ...], stream: Any, device: Any) -> None:  # fmt: skip
        import torch

        self.ctx = engine.create_execution_context()
        self.ctx.set_optimization_profile_async(index, stream.cuda_stream)
        self.ctx.set_input_shape(input_name, max_input)
        self.device_buf: dict[str, Any] = {}
        self.host_buf: dict[str, Any] = {}
        for t in tensors:
            numel = int(np.prod(tuple(self.ctx.get_tensor_shape(t.name))))
            dtype = torch.from_numpy(np.empty(0, t.dtype)).dtype
            self.device_buf[t.name] = torch.empty(numel, dtype=dtype, device=device)
            self.host_buf[t.name] = torch.empty(numel, dtype=dtype, pin_memory=True)
            self.ctx.set_tensor_address(t.name, self.device_buf[t.name].data_ptr())


class TensorRTEngine:
    """Engine on TensorRT; one object per server engine instance (one worker thread)."""

    def __init__(
        self,
        package: ModelPackage | str | Path,
        max_batch_size: int | None = None,
        preferred_batch_sizes: Sequence[int] = (),
        precision: str | None = None,
        cache_dir: str | Path | None = None,
        workspace_mb: int = 2048,
        device: int = 0,
        pad_to_preferred: bool = False,
    ) -> None:
        pkg = package if isinstance(package, ModelPackage) else load_package(package)
        if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb < 16:
            raise ValueError(
                f"tensorrt engine option 'workspace_mb' must be an integer >= 16, got "
                f"{workspace_mb!r}"
            )
        trt = import_tensorrt()
        import torch

        self._device = _cuda_device(device)
        m = pkg.manifest
        top = max_batch_size if max_batch_size is not None else m.max_batch_size
        self._profiles = build_profiles(top, preferred_batch_sizes)
        self._precision, flags = precision_flags(m.precision, precision)
        self._allowed = sorted({p.opt for p in self._profiles} | {top}) if pad_to_preferred else []
        self._manifest = replace(m, max_batch_size=top)
        self._chw = (3, m.input_height, m.input_width)
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        spec = BuildSpec(pkg.model_path, m.input_name, self._chw, flags, self._profiles,
                         workspace_mb << 20)  # fmt: skip
        gpu = torch.cuda.get_device_name(self._device)
        root = Path(cache_dir or DEFAULT_CACHE_DIR)
        plan = self._load_or_build(trt, spec, pkg, root, gpu, workspace_mb)
        with torch.cuda.device(self._device):
            self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan)
            if self._engine is None:
                raise RuntimeError("TensorRT could not deserialize the engine plan")
            self._stream = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
        self._tensors = self._describe(trt)
        self._contexts: dict[int, _Context] = {}
        self._closed = False

    # ---- set-up ----------------------------------------------------------------------------
    def _load_or_build(self, trt: Any, spec: BuildSpec, pkg: ModelPackage, root: Path,
                       gpu: str, workspace_mb: int) -> bytes:  # fmt: skip
        cache = EngineCache(root)
        key = EngineCacheKey(file_sha256(pkg.model_path), str(trt.__version__), gpu,
                             self._precision, self._profiles, workspace_mb)  # fmt: skip
        path = cache.engine_path(pkg.manifest.name, key)
        plan = cache.read(path)
        self.plan_source = "cache" if plan is not None else "built"
        self.plan_path = path
        if plan is None:
            timing_path = cache.timing_path(key.tensorrt_version, gpu)
            plan, timing = build_plan(trt, self._logger, spec, cache.read(timing_path))
            cache.write(timing_path, timing)
            cache.write(path, plan)
        return plan

    def _describe(self, trt: Any) -> list[_Tensor]:
        e = self._engine
        tensors = []
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            is_input = e.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            tensors.append(_Tensor(name, np.dtype(trt.nptype(e.get_tensor_dtype(name))), is_input))
        inputs = [t.name for t in tensors if t.is_input]
        if inputs != [self._manifest.input_name]:
            raise RuntimeError(
                f"engine inputs {inputs} do not match the manifest's input.name "
                f"{self._manifest.input_name!r}"
            )
        return tensors

    def _context(self, index: int) -> _Context:
        if index not in self._contexts:
            max_input = (self._profiles[index].max, *self._chw)
            self._contexts[index] = _Context(self._engine, index, self._tensors,
                                             self._manifest.input_name, max_input,
                                             self._stream, self._device)  # fmt: skip
        return self._contexts[index]

    # ---- Engine protocol -------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def kind(self) -> str:
        return "tensorrt"

    @property
    def profiles(self) -> tuple[BatchProfile, ...]:
        return self._profiles

    def infer(self, batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        if self._closed:
            raise RuntimeError(f"tensorrt engine for model {self._manifest.name!r} is closed")
        top = self._manifest.max_batch_size
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self._chw or not 1 <= batch.shape[0] <= top:
            raise ValueError(
                f"tensorrt engine expects a batch [B, {', '.join(map(str, self._chw))}] with "
                f"1 <= B <= {top}, got {tuple(batch.shape)}"
            )
        import torch

        n = batch.shape[0]
        size = padded_batch_size(n, self._allowed) if self._allowed else n
        # Worker threads start on device 0; TensorRT runs on the thread's current device.
        with torch.cuda.device(self._device):
            return [o[:n].copy() for o in self._run(pad_batch(batch, size))]

    def _run(self, data: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        import torch

        c = self._context(select_profile(self._profiles, data.shape[0]))
        c.ctx.set_input_shape(self._manifest.input_name, data.shape)
        shapes = {t.name: tuple(c.ctx.get_tensor_shape(t.name)) for t in self._tensors}
        with torch.cuda.stream(self._stream):
            for t in self._tensors:
                if t.is_input:
                    host = c.host_buf[t.name][: data.size]
                    host.copy_(torch.from_numpy(np.ascontiguousarray(data, t.dtype).reshape(-1)))
                    c.device_buf[t.name][: data.size].copy_(host, non_blocking=True)
            if not c.ctx.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            outs = [t for t in self._tensors if not t.is_input]
            for t in outs:
                numel = int(np.prod(shapes[t.name]))
                c.host_buf[t.name][:numel].copy_(c.device_buf[t.name][:numel], non_blocking=True)
        self._stream.synchronize()
        return [
            c.host_buf[t.name][: int(np.prod(shapes[t.name]))].numpy().reshape(shapes[t.name])
            for t in outs
        ]

    def close(self) -> None:
        self._closed = True
        self._contexts.clear()
