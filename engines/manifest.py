"""Model packages: a directory with an ONNX file and `manifest.yaml`, validated on load.

Every validation error names the field (dotted path) and the value it got, so a person can fix
the manifest without reading this code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

MANIFEST_FILE = "manifest.yaml"
OUTPUT_FORMATS = ("yolov8", "end2end", "torchvision")
RESIZE_MODES = ("letterbox", "stretch")
COLOR_ORDERS = ("RGB", "BGR")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
NMS_PLACEMENTS = ("host", "in-graph", "gpu")

OutputFormat = Literal["yolov8", "end2end", "torchvision"]
ResizeMode = Literal["letterbox", "stretch"]
ColorOrder = Literal["RGB", "BGR"]


class ManifestError(ValueError):
    """A manifest field is missing or has a bad value."""


@dataclass(frozen=True)
class Preprocess:
    color_order: ColorOrder = "RGB"
    resize: ResizeMode = "letterbox"
    pad_value: int = 114
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Postprocess:
    score_threshold: float = 0.25
    iou_threshold: float = 0.5
    max_detections: int = 100
    # Candidates kept per image before NMS (highest scores first); bounds host NMS time.
    pre_nms_top_k: int = 1000
    # False: each anchor proposes only its best class (Ultralytics' deployed NMS). True: every
    # (anchor, class) pair above the threshold is a candidate, as EfficientNMS, the ONNX NMS
    # graph and COCO-style evaluation do; an ambiguous object can then answer under two labels.
    multi_label: bool = False


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    classes: tuple[str, ...]
    input_width: int
    input_height: int
    model_file: str = "model.onnx"
    input_name: str = "images"
    output_format: OutputFormat = "yolov8"
    nms: str = "host"
    # `torchvision` format only: the graph's label for classes[0]. torchvision's detectors
    # reserve label 0 for the background, so their first real class is label 1.
    label_offset: int = 1
    precision: str = "fp32"
    preprocess: Preprocess = field(default_factory=Preprocess)
    postprocess: Postprocess = field(default_factory=Postprocess)
    max_batch_size: int = 64
    # Free-form facts: val metrics (with the IoU they were computed at), calibration set, ...
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["classes"] = list(self.classes)
        raw["metadata"] = dict(self.metadata)
        pre = raw.pop("preprocess")
        pre["mean"], pre["std"] = list(pre["mean"]), list(pre["std"])
        output: dict[str, Any] = {"format": raw["output_format"], "nms": raw["nms"]}
        if raw["output_format"] == "torchvision":
            output["label_offset"] = raw["label_offset"]
        return {
            "name": raw["name"],
            "version": raw["version"],
            "classes": raw["classes"],
            "model_file": raw["model_file"],
            "input": {
                "name": raw["input_name"],
                "width": raw["input_width"],
                "height": raw["input_height"],
                "max_batch_size": raw["max_batch_size"],
            },
            "preprocess": pre,
            "output": output,
            "postprocess": raw["postprocess"],
            "precision": raw["precision"],
            "metadata": raw["metadata"],
        }


@dataclass(frozen=True)
class ModelPackage:
    """A loaded, validated package: its directory and manifest."""

    root: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model_file


def _get(raw: Mapping[str, Any], key: str, path: str, default: Any = ...) -> Any:
    if key in raw:
        return raw[key]
    if default is ...:
        raise ManifestError(f"manifest field '{path}{key}' is required but missing")
    return default


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(f"manifest field '{key}' must be a mapping, got {value!r}")
    return value


def _choice(value: Any, choices: tuple[str, ...], path: str) -> Any:
    if value not in choices:
        raise ManifestError(
            f"manifest field '{path}' must be one of {list(choices)}, got {value!r}"
        )
    return value


def _int(value: Any, path: str, minimum: int, maximum: int | None = None) -> int:
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= minimum
    if not ok or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ManifestError(f"manifest field '{path}' must be an integer {bound}, got {value!r}")
    return int(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestError(f"manifest field '{path}' must be true or false, got {value!r}")
    return value


def _float(value: Any, path: str, low: float, high: float) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value <= high:
        raise ManifestError(
            f"manifest field '{path}' must be a number in [{low}, {high}], got {value!r}"
        )
    return float(value)


def _triple(value: Any, path: str, positive: bool) -> tuple[float, float, float]:
    bad = not isinstance(value, list | tuple) or len(value) != 3
    if not bad:
        bad = any(isinstance(v, bool) or not isinstance(v, int | float) for v in value)
    if not bad and positive:
        bad = any(v <= 0 for v in value)
    if bad:
        kind = "3 positive numbers" if positive else "3 numbers"
        raise ManifestError(f"manifest field '{path}' must be a list of {kind}, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _classes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise ManifestError(
            f"manifest field 'classes' must be a non-empty list of names, got {value!r}"
        )
    return tuple(value)


def _preprocess(raw: Mapping[str, Any]) -> Preprocess:
    d = Preprocess()
    return Preprocess(
        color_order=_choice(
            raw.get("color_order", d.color_order), COLOR_ORDERS, "preprocess.color_order"
        ),
        resize=_choice(raw.get("resize", d.resize), RESIZE_MODES, "preprocess.resize"),
        # Padding fills uint8 pixels before scaling: 256 would wrap around to 0.
        pad_value=_int(raw.get("pad_value", d.pad_value), "preprocess.pad_value", 0, 255),
        scale=_float(raw.get("scale", d.scale), "preprocess.scale", 1e-9, 1e9),
        mean=_triple(raw.get("mean", list(d.mean)), "preprocess.mean", positive=False),
        std=_triple(raw.get("std", list(d.std)), "preprocess.std", positive=True),
    )


def _postprocess(raw: Mapping[str, Any]) -> Postprocess:
    d = Postprocess()
    return Postprocess(
        score_threshold=_float(
            raw.get("score_threshold", d.score_threshold), "postprocess.score_threshold", 0.0, 1.0
        ),
        iou_threshold=_float(
            raw.get("iou_threshold", d.iou_threshold), "postprocess.iou_threshold", 1e-6, 1.0
        ),
        max_detections=_int(
            raw.get("max_detections", d.max_detections), "postprocess.max_detections", 1
        ),
        pre_nms_top_k=_int(
            raw.get("pre_nms_top_k", d.pre_nms_top_k), "postprocess.pre_nms_top_k", 1
        ),
        multi_label=_bool(raw.get("multi_label", d.multi_label), "postprocess.multi_label"),
    )


def parse_manifest(raw: Any) -> Manifest:
    """Validate a manifest mapping (as read from YAML) into a `Manifest`."""
    if not isinstance(raw, Mapping):
        raise ManifestError(
            f"manifest must be a mapping at the top level, got {type(raw).__name__}"
        )
    name = _get(raw, "name", "")
    if not isinstance(name, str) or not name or "@" in name:
        raise ManifestError(
            f"manifest field 'name' must be a non-empty string without '@', got {name!r}"
        )
    inp = _section(raw, "input")
    out = _section(raw, "output")
    if _get(raw, "input", "") is None:
        raise ManifestError("manifest field 'input' is required but empty")
    meta = raw.get("metadata", {}) or {}
    if not isinstance(meta, Mapping):
        raise ManifestError(f"manifest field 'metadata' must be a mapping, got {meta!r}")
    return Manifest(
        name=name,
        version=str(raw.get("version", "1")),
        classes=_classes(_get(raw, "classes", "")),
        model_file=str(raw.get("model_file", "model.onnx")),
        input_name=str(inp.get("name", "images")),
        input_width=_int(_get(inp, "width", "input."), "input.width", 32),
        input_height=_int(_get(inp, "height", "input."), "input.height", 32),
        max_batch_size=_int(inp.get("max_batch_size", 64), "input.max_batch_size", 1),
        output_format=_choice(out.get("format", "yolov8"), OUTPUT_FORMATS, "output.format"),
        nms=_choice(out.get("nms", "host"), NMS_PLACEMENTS, "output.nms"),
        label_offset=_int(out.get("label_offset", 1), "output.label_offset", 0),
        precision=_choice(raw.get("precision", "fp32"), PRECISIONS, "precision"),
        preprocess=_preprocess(_section(raw, "preprocess")),
        postprocess=_postprocess(_section(raw, "postprocess")),
        metadata=dict(meta),
    )


def default_engine_kind(manifest: Manifest) -> str:
    """The engine kind a package runs on when none is named: `openvino` for an OpenVINO IR
    (`model_file: *.xml`), `tensorrt` for a graph whose NMS is a TensorRT plugin
    (`metadata.nms_graph.runs_on: tensorrt`), else `onnxruntime`. The package already says which
    runtime can load it, so no caller should have to repeat it."""
    if Path(manifest.model_file).suffix.lower() == ".xml":
        return "openvino"
    nms_graph = manifest.metadata.get("nms_graph")
    if isinstance(nms_graph, Mapping) and nms_graph.get("runs_on") == "tensorrt":
        return "tensorrt"
    return "onnxruntime"


def load_package(root: str | Path) -> ModelPackage:
    """Load and validate the model package at `root` (a directory, or its manifest.yaml)."""
    path = Path(root)
    if path.is_file() and path.name == MANIFEST_FILE:
        path = path.parent
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in model package directory {str(path)!r}")
    try:
        raw = yaml.safe_load(manifest_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{manifest_path} is not valid YAML: {exc}") from exc
    except RecursionError as exc:  # found by fuzzing (tests/fuzz): "[[[[..." thousands deep
        raise ManifestError(f"{manifest_path} is not valid YAML: nested too deeply") from exc
    manifest = parse_manifest(raw)
    package = ModelPackage(root=path, manifest=manifest)
    if not package.model_path.is_file():
        raise ManifestError(
            f"manifest field 'model_file' points to {manifest.model_file!r}, "
            f"which does not exist in {str(path)!r}"
        )
    return package


def write_manifest(manifest: Manifest, root: str | Path) -> Path:
    """Write `manifest` as `root/manifest.yaml`; returns the path."""
    path = Path(root) / MANIFEST_FILE
    path.write_text(yaml.safe_dump(manifest.to_dict(), sort_keys=False))
    return path
