"""`detserve-model import`: turn an Ultralytics YOLOv8/YOLO11 ONNX export into a model package.

`yolo export format=onnx` writes one input `images [B, 3, H, W]` (RGB, /255, letterboxed with
grey 114) and one output `[B, 4 + nc, N]` (cx, cy, w, h in input pixels, then per-class
scores): detserve's `yolov8` format, so only a manifest is needed. Class names come from
`--names` (`coco` for the built-in COCO-80 list, or a file), else from the `names` entry
Ultralytics stores in the ONNX metadata. The input size is read from the graph (or its `imgsz`
metadata when the graph's spatial size is dynamic).
"""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import yaml

from detserve.engines.manifest import Manifest, Postprocess, Preprocess, write_manifest

COCO80: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# Ultralytics' own prediction defaults (conf 0.25, NMS IoU 0.7).
DEFAULT_POSTPROCESS = Postprocess(score_threshold=0.25, iou_threshold=0.7, max_detections=300)


class YoloImportError(ValueError):
    """The ONNX file is not a YOLOv8-layout detector, or the names do not fit it."""


@dataclass(frozen=True)
class GraphInfo:
    input_name: str
    width: int | None
    height: int | None
    batch: int | None  # None when the batch dimension is dynamic
    output_rows: int | None
    metadata: dict[str, str]


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | None:
    return int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None


def inspect_graph(model: onnx.ModelProto) -> GraphInfo:
    """Input name/size and output rows of a YOLOv8-layout graph, or YoloImportError."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise YoloImportError(f"expected one image input, the graph has {[i.name for i in inputs]}")
    in_dims = [_dim(d) for d in inputs[0].type.tensor_type.shape.dim]
    if len(in_dims) != 4 or in_dims[1] not in (3, None):
        raise YoloImportError(f"input {inputs[0].name!r} must be [B, 3, H, W], got dims {in_dims}")
    if len(model.graph.output) != 1:
        names = [o.name for o in model.graph.output]
        raise YoloImportError(f"expected one output [B, 4+nc, N] (yolov8 layout), got {names}; "
                           "exports with NMS (nms=True, YOLOv10) are not this format")
    out_dims = [_dim(d) for d in model.graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) != 3:
        raise YoloImportError(f"output must be [B, 4+nc, N], got {len(out_dims)} dims: {out_dims}")
    meta = {p.key: p.value for p in model.metadata_props}
    return GraphInfo(inputs[0].name, in_dims[3], in_dims[2], in_dims[0], out_dims[1], meta)


def read_names(spec: str | None, metadata: dict[str, str]) -> tuple[str, ...]:
    """Class names from `spec` ("coco", a .txt/.yaml/.json file) or the ONNX `names` metadata."""
    if spec == "coco":
        return COCO80
    if spec is None:
        if "names" not in metadata:
            raise YoloImportError("the ONNX file has no 'names' metadata; pass --names coco or "
                               "--names FILE (one class name per line)")
        return _names_from(ast.literal_eval(metadata["names"]), "ONNX metadata 'names'")
    path = Path(spec)
    if not path.is_file():
        raise YoloImportError(f"--names must be 'coco' or an existing file, got {spec!r}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml", ".json"):
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if isinstance(raw, dict) and "names" in raw:
            raw = raw["names"]
        return _names_from(raw, str(path))
    return _names_from([ln.strip() for ln in text.splitlines() if ln.strip()], str(path))


def _names_from(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, dict):  # Ultralytics stores {0: "person", 1: "bicycle", ...}
        keys = sorted(int(k) for k in raw)
        if keys != list(range(len(keys))):
            raise YoloImportError(f"class ids in {where} must be 0..n-1, got {keys[:10]}...")
        raw = [raw[k] if k in raw else raw[str(k)] for k in keys]
    if not isinstance(raw, list) or not raw or not all(isinstance(n, str) and n for n in raw):
        raise YoloImportError(f"{where} must list non-empty class names, got {str(raw)[:80]!r}")
    return tuple(raw)


def _input_size(info: GraphInfo, imgsz: int | None) -> tuple[int, int]:
    if info.width and info.height:
        return info.width, info.height
    if imgsz is not None:
        return imgsz, imgsz
    if "imgsz" in info.metadata:
        size = ast.literal_eval(info.metadata["imgsz"])
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return w, h
    raise YoloImportError("the graph's input size is dynamic and it has no 'imgsz' metadata; "
                       "pass --imgsz")


def build_manifest(info: GraphInfo, names: tuple[str, ...], name: str,
                   imgsz: int | None = None) -> Manifest:
    if info.output_rows is not None and info.output_rows != 4 + len(names):
        raise YoloImportError(
            f"{len(names)} class names need an output of {4 + len(names)} rows [B, 4+nc, N], "
            f"but the graph's output has {info.output_rows} rows "
            f"({info.output_rows - 4} classes)")
    width, height = _input_size(info, imgsz)
    keep = ("author", "version", "date", "task", "stride", "license", "description")
    meta: dict[str, Any] = {"imported_from": "ultralytics onnx export"}
    meta.update({f"ultralytics_{k}": info.metadata[k] for k in keep if k in info.metadata})
    return Manifest(
        name=name, version=str(info.metadata.get("version", "1")), classes=names,
        input_width=width, input_height=height, input_name=info.input_name,
        output_format="yolov8", nms="host",
        preprocess=Preprocess(color_order="RGB", resize="letterbox", pad_value=114,
                              scale=1.0 / 255.0),
        postprocess=DEFAULT_POSTPROCESS, max_batch_size=info.batch or 64, metadata=meta)


def import_onnx(onnx_path: str | Path, names: str | None = None, out: str | Path | None = None,
                name: str | None = None, imgsz: int | None = None, force: bool = False) -> Path:
    """Write a package (model.onnx + manifest.yaml) for `onnx_path`; returns its directory."""
    src = Path(onnx_path)
    if not src.is_file():
        raise YoloImportError(f"ONNX file not found: {src}")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError & co. for non-ONNX files
        raise YoloImportError(f"{src} is not a readable ONNX model: {e}") from e
    info = inspect_graph(model)
    manifest = build_manifest(info, read_names(names, info.metadata), name or src.stem, imgsz)
    dest = Path(out) if out is not None else src.with_suffix("")
    if (dest / "manifest.yaml").exists() and not force:
        raise YoloImportError(f"{dest} already holds a manifest.yaml; pass --force to overwrite")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest / manifest.model_file)
    write_manifest(manifest, dest)
    return dest
