"""The ONNX Runtime engine: CPU by default, any installed execution provider on request.

`InferenceSession.run` releases the GIL, so one engine object per worker thread lets batches
overlap. The graph is checked against the manifest at load time, so a package whose manifest
disagrees with its model fails at start-up with the field and both values, not on first request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from detserve.engines.manifest import Manifest, ManifestError, ModelPackage

Provider = str | tuple[str, Mapping[str, Any]]
_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def _check_dim(graph_dim: object, expected: int, field: str, manifest_value: int) -> None:
    # Symbolic (str) or unknown (None) dims are dynamic and accept the manifest's value.
    if isinstance(graph_dim, int) and graph_dim != expected:
        raise ManifestError(
            f"manifest field '{field}' is {manifest_value} but the model graph's input has "
            f"{graph_dim} there"
        )


def check_graph(session: ort.InferenceSession, manifest: Manifest) -> ort.NodeArg:
    """The graph's input, after checking its name, layout and outputs against the manifest."""
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    if manifest.input_name not in names:
        raise ManifestError(
            f"manifest field 'input.name' is {manifest.input_name!r} but the model graph's "
            f"inputs are {names}"
        )
    node = inputs[names.index(manifest.input_name)]
    if node.type not in _INPUT_TYPES:
        raise ManifestError(f"model input {node.name!r} has type {node.type}; expected float")
    shape = list(node.shape)
    if len(shape) != 4:
        raise ManifestError(f"model input {node.name!r} has shape {shape}; expected [B, 3, H, W]")
    batch, channels, height, width = shape
    _check_dim(channels, 3, "input (channels)", 3)
    _check_dim(height, manifest.input_height, "input.height", manifest.input_height)
    _check_dim(width, manifest.input_width, "input.width", manifest.input_width)
    if isinstance(batch, int) and manifest.max_batch_size > batch:
        raise ManifestError(
            f"manifest field 'input.max_batch_size' is {manifest.max_batch_size} but the model "
            f"graph's batch dimension is fixed at {batch}"
        )
    _check_outputs(session, manifest)
    return node


def _check_outputs(session: ort.InferenceSession, manifest: Manifest) -> None:
    outputs = session.get_outputs()
    if manifest.output_format == "torchvision":
        _check_torchvision_outputs(outputs)
        return
    if manifest.output_format == "end2end":
        if len(outputs) != 4:
            raise ManifestError(
                f"manifest field 'output.format' is 'end2end' (4 outputs) but the model graph "
                f"has {len(outputs)} outputs: {[o.name for o in outputs]}"
            )
        return
    if len(outputs) != 1:
        raise ManifestError(
            f"manifest field 'output.format' is 'yolov8' (1 output) but the model graph has "
            f"{len(outputs)} outputs: {[o.name for o in outputs]}"
        )
    shape = list(outputs[0].shape)
    rows = shape[1] if len(shape) == 3 else None
    if isinstance(rows, int) and rows != 4 + manifest.num_classes:
        raise ManifestError(
            f"manifest field 'classes' lists {manifest.num_classes} classes, so the yolov8 "
            f"output should have {4 + manifest.num_classes} rows, but the graph has {rows} "
            f"(shape {shape})"
        )


def _check_torchvision_outputs(outputs: Sequence[ort.NodeArg]) -> None:
    # torchvision's detectors loop over the images in Python, so tracing unrolls the loop: a
    # graph exported at batch B has 3*B outputs and runs only at batch B, whatever its
    # dynamic_axes say. A one-image graph (3 outputs) is run image by image in `infer` instead.
    if len(outputs) != 3:
        raise ManifestError(
            f"manifest field 'output.format' is 'torchvision' (3 outputs: boxes, labels, scores "
            f"of one image) but the model graph has {len(outputs)} outputs: "
            f"{[o.name for o in outputs]}; export it with a batch-1 dummy input"
        )
    ranks = [len(o.shape) for o in outputs]
    if ranks != [2, 1, 1]:
        raise ManifestError(
            f"manifest field 'output.format' is 'torchvision' (boxes [N,4], labels [N], "
            f"scores [N]) but the model graph's outputs have shapes "
            f"{[list(o.shape) for o in outputs]}"
        )


def _tensorrt_plugin_nodes(model_path: Path) -> list[str]:
    """`name (op)` of every TensorRT plugin node (op type `*_TRT`) in the graph; none if the
    file does not parse (the caller then re-raises ONNX Runtime's own error)."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return []
    return [f"{n.name!r} ({n.op_type})" for n in model.graph.node if n.op_type.endswith("_TRT")]


def _needs_tensorrt(package: ModelPackage, what: str) -> ValueError:
    return ValueError(
        f"model package {str(package.root)!r} needs the tensorrt engine: {what}, which ONNX "
        f"Runtime cannot run. Serve it with engine 'tensorrt', or make an ONNX Runtime package "
        f"from its yolov8 source with `detserve-model add-nms SOURCE --target ort`"
    )


def _check_not_tensorrt_only(package: ModelPackage) -> None:
    nms_graph = package.manifest.metadata.get("nms_graph")
    runs_on = nms_graph.get("runs_on") if isinstance(nms_graph, Mapping) else None
    if runs_on is not None and runs_on != "onnxruntime":
        raise _needs_tensorrt(
            package, f"its manifest says metadata.nms_graph.runs_on: {runs_on} (NMS in a "
            "TensorRT plugin such as EfficientNMS_TRT)"
        )


def _check_not_openvino_ir(package: ModelPackage) -> None:
    if package.model_path.suffix.lower() == ".xml":
        raise ValueError(
            f"model package {str(package.root)!r} holds an OpenVINO IR "
            f"({package.manifest.model_file}), which ONNX Runtime cannot load; run it on engine "
            f"'openvino' (the default for this package when no engine is named)"
        )


def _session(
    package: ModelPackage, options: ort.SessionOptions, providers: Sequence[Provider]
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(package.model_path), sess_options=options, providers=list(providers)
        )
    except Exception as exc:  # ORT's load errors derive from Exception only
        plugins = _tensorrt_plugin_nodes(package.model_path)
        if plugins:
            raise _needs_tensorrt(
                package, f"its graph holds TensorRT plugin node(s) {', '.join(plugins)}"
            ) from exc
        raise


class OrtEngine:
    """Engine on onnxruntime; one instance per worker thread."""

    def __init__(
        self,
        package: ModelPackage,
        providers: Sequence[Provider] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        chosen = list(providers) if providers is not None else ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        missing = [_provider_name(p) for p in chosen if _provider_name(p) not in available]
        if missing or not chosen:
            raise ValueError(
                f"onnxruntime execution providers {missing or chosen} are not available; "
                f"this onnxruntime has {available}"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            if intra_op_threads < 0:
                raise ValueError(
                    f"intra_op_threads must be >= 0 (0 = ORT's default), got {intra_op_threads}"
                )
            options.intra_op_num_threads = intra_op_threads
        _check_not_tensorrt_only(package)
        _check_not_openvino_ir(package)
        self._manifest = package.manifest
        self._session = _session(package, options, chosen)
        node = check_graph(self._session, self._manifest)
        self._input_name = node.name
        self._input_dtype = _INPUT_TYPES[node.type]
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._closed = False

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def kind(self) -> str:
        return "onnxruntime"

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses, best first."""
        return list(self._session.get_providers())

    def infer(self, batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        m = self._manifest
        expected = (3, m.input_height, m.input_width)
        if batch.ndim != 4 or batch.shape[1:] != expected or batch.shape[0] < 1:
            raise ValueError(
                f"batch must have shape [B, {', '.join(map(str, expected))}], got {batch.shape}"
            )
        if batch.shape[0] > m.max_batch_size:
            raise ValueError(
                f"batch of {batch.shape[0]} is above the model's max_batch_size {m.max_batch_size}"
            )
        if self._closed:
            raise RuntimeError(f"engine for model {m.name!r} is closed")
        feed = np.ascontiguousarray(batch, dtype=self._input_dtype)
        if m.output_format == "torchvision":
            # A one-image graph (see _check_torchvision_outputs): one run per image, outputs
            # concatenated in batch order, the layout decode_batch reads.
            per_image: list[npt.NDArray[np.generic]] = []
            for i in range(feed.shape[0]):
                run = self._session.run(self._output_names, {self._input_name: feed[i : i + 1]})
                per_image.extend(np.asarray(o) for o in run)
            return per_image
        outputs = self._session.run(self._output_names, {self._input_name: feed})
        return [np.asarray(o) for o in outputs]

    def close(self) -> None:
        if self._closed:
            return
        # Dropping the session frees its arena; ORT has no explicit close.
        self._closed = True
        del self._session
