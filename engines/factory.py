"""Engine construction by kind name, so configuration files can pick the backend.

Backends other than ONNX Runtime are imported only when asked for: their packages (openvino,
tensorrt, torch) are optional and heavy.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from detserve.engines.base import Engine
from detserve.engines.manifest import ModelPackage

# kind -> (module, class)
ENGINE_KINDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("detserve.engines.ort", "OrtEngine"),
    "openvino": ("detserve.engines.openvino", "OpenVinoEngine"),
    "tensorrt": ("detserve.engines.tensorrt", "TensorRTEngine"),
    "torch-cuda": ("detserve.engines.torch_cuda", "TorchEngine"),
}


def create_engine(
    package: ModelPackage, kind: str = "onnxruntime", options: Mapping[str, Any] | None = None
) -> Engine:
    """A new engine of `kind` for `package`; `options` are the constructor's keyword arguments."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine kind {kind!r}; known kinds: {sorted(ENGINE_KINDS)}")
    if package.manifest.output_format == "torchvision" and kind != "onnxruntime":
        # Only OrtEngine runs a one-image graph image by image; the others would feed it a
        # whole (or zero-padded) batch and read image 0's detections as the batch's.
        raise ValueError(
            f"model package {str(package.root)!r} has output.format 'torchvision' (a one-image "
            f"graph), which runs on engine 'onnxruntime' only, not {kind!r}"
        )
    module_name, class_name = ENGINE_KINDS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"engine kind {kind!r} needs {module_name}, which failed to import: {exc}"
        ) from exc
    engine_class = getattr(module, class_name)
    kwargs = dict(options or {})
    # Check the option names first, so a typo in a config file names itself; a TypeError
    # raised inside the constructor is a bug and must not be reworded as bad options.
    try:
        inspect.signature(engine_class).bind(package, **kwargs)
    except TypeError as exc:
        accepted = [n for n in inspect.signature(engine_class).parameters if n != "package"]
        raise ValueError(
            f"bad options {sorted(kwargs)} for engine kind {kind!r} ({exc}); it accepts {accepted}"
        ) from exc
    engine: Engine = engine_class(package, **kwargs)
    return engine
