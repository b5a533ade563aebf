"""`detserve-model import`: turn an Ultralytics YOLOv8/YOLO11 ONNX export into a model package.

`yolo export format=onnx` writes one input `images [B, 3, H, W]` (RGB, /255, letterboxed with
grey 114) and one output `[B, 4 + nc, N]` (cx, cy, w, h in input pixels, then per-class
scores): detserve's `yolov8` format, so only a manifest is needed. Class names come from
`--names` (`coco` for the built-in COCO-80 list, or a file), else from the `names` entry
Ultralytics stores in the ONNX metadata. The input size is read from the graph (or its `imgsz`
metadata when the graph's spatial size is dynamic). When the output's class rows are symbolic
(some `dynamic=True` exports), the graph is run once on a dummy input to count them, so names
that do not fit are refused here rather than failing every request of the server.

The manifest tells what the file is: the weights' precision (an fp16 export is fp16), a fixed
batch as `input.max_batch_size` (the server limits its batches to it), the package version
(`--version`, not the Ultralytics version, which stays in metadata as the exporter's), and
where the package came from (`metadata.import`, which the model card reads).
"""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
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
    output_rows: int | None  # None when symbolic: count_rows runs the graph to find them
    metadata: dict[str, str]
    precision: str = "fp32"  # of the weights (and input): fp32, fp16 or bf16


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
    return GraphInfo(inputs[0].name, in_dims[3], in_dims[2], in_dims[0], out_dims[1], meta,
                     weights_precision(model, inputs[0].type.tensor_type.elem_type))


_FLOAT_TYPES: dict[int, str] = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16",
                                onnx.TensorProto.BFLOAT16: "bf16"}


def weights_precision(model: onnx.ModelProto, input_type: int) -> str:
    """fp16/bf16 when the input is, else the float type holding most weight elements."""
    if input_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
        return _FLOAT_TYPES[input_type]
    counts = dict.fromkeys(_FLOAT_TYPES.values(), 0)
    for init in model.graph.initializer:
        if init.data_type in _FLOAT_TYPES:
            counts[_FLOAT_TYPES[init.data_type]] += int(np.prod(init.dims, dtype=np.int64))
    return max(counts, key=lambda k: (counts[k], k == "fp32"))


def count_rows(path: Path, info: GraphInfo, width: int, height: int) -> int:
    """The output's row count (4 + classes), from one run of the graph on a dummy input."""
    import onnxruntime as ort

    dtype = np.float16 if info.precision == "fp16" else np.float32
    dummy = np.zeros((info.batch or 1, 3, height, width), dtype)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out, *_) = session.run(None, {info.input_name: dummy})
    except Exception as e:  # ORT's load and run errors derive from Exception only
        raise YoloImportError(f"the output's class count is symbolic in the graph, and running "
                              f"it on a dummy input to count them failed: {e}") from e
    if out.ndim != 3:
        raise YoloImportError(f"output must be [B, 4+nc, N], the graph gave shape {out.shape}")
    return int(out.shape[1])


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


@dataclass(frozen=True)
class ImportOptions:
    """What `detserve-model import` takes besides the file: names, package name and version,
    the input size where the graph's is dynamic, and the serving thresholds."""

    names: str | None = None
    name: str | None = None
    version: str = "1"
    imgsz: int | None = None
    score_threshold: float | None = None  # None: Ultralytics' predict default (0.25)
    iou_threshold: float | None = None  # None: Ultralytics' NMS default (0.7)
    max_detections: int | None = None  # None: Ultralytics' max_det (300)
    command: str | None = None  # the command line, recorded in metadata.import


def _postprocess(opts: ImportOptions) -> Postprocess:
    d = DEFAULT_POSTPROCESS
    post = replace(
        d,
        score_threshold=d.score_threshold if opts.score_threshold is None else opts.score_threshold,
        iou_threshold=d.iou_threshold if opts.iou_threshold is None else opts.iou_threshold,
        max_detections=d.max_detections if opts.max_detections is None else opts.max_detections,
    )
    if not 0.0 <= post.score_threshold <= 1.0 or not 0.0 < post.iou_threshold <= 1.0:
        raise YoloImportError(f"--score-threshold must be in [0, 1] and --iou-threshold in (0, 1], "
                              f"got {post.score_threshold} and {post.iou_threshold}")
    if post.max_detections < 1:
        raise YoloImportError(f"--max-detections must be >= 1, got {post.max_detections}")
    return post


def build_manifest(info: GraphInfo, names: tuple[str, ...], opts: ImportOptions, source: str,
                   rows_from: str = "the graph's output shape") -> Manifest:
    """The package manifest; `info.output_rows` must be known (count_rows where symbolic)."""
    if info.output_rows is not None and info.output_rows != 4 + len(names):
        raise YoloImportError(
            f"{len(names)} class names need an output of {4 + len(names)} rows [B, 4+nc, N], "
            f"but the graph's output has {info.output_rows} rows "
            f"({info.output_rows - 4} classes; read from {rows_from})")
    width, height = _input_size(info, opts.imgsz)
    keep = ("author", "version", "date", "task", "stride", "license", "description")
    meta: dict[str, Any] = {"imported_from": "ultralytics onnx export"}
    meta.update({f"ultralytics_{k}": info.metadata[k] for k in keep if k in info.metadata})
    meta["import"] = {
        "source": source, "command": opts.command,
        "batch": "dynamic" if info.batch is None else f"fixed at {info.batch}",
        "class_count_from": rows_from, "weights": info.precision,
    }  # fmt: skip
    return Manifest(
        name=opts.name or Path(source).stem, version=opts.version, classes=names,
        input_width=width, input_height=height, input_name=info.input_name,
        output_format="yolov8", nms="host", precision=info.precision,
        preprocess=Preprocess(color_order="RGB", resize="letterbox", pad_value=114,
                              scale=1.0 / 255.0),
        postprocess=_postprocess(opts), max_batch_size=info.batch or 64, metadata=meta)


def import_onnx(onnx_path: str | Path, names: str | None = None, out: str | Path | None = None,
                name: str | None = None, imgsz: int | None = None, force: bool = False,
                options: ImportOptions | None = None) -> Path:
    """Write a package (model.onnx + manifest.yaml) for `onnx_path`; returns its directory.
    `options` (when given) replaces `names`, `name` and `imgsz`."""
    src = Path(onnx_path)
    opts = options or ImportOptions(names=names, name=name, imgsz=imgsz)
    if not src.is_file():
        raise YoloImportError(f"ONNX file not found: {src}")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError & co. for non-ONNX files
        raise YoloImportError(f"{src} is not a readable ONNX model: {e}") from e
    info = inspect_graph(model)
    class_names = read_names(opts.names, info.metadata)
    rows_from = "the graph's output shape"
    if info.output_rows is None:
        width, height = _input_size(info, opts.imgsz)
        info = replace(info, output_rows=count_rows(src, info, width, height))
        rows_from = "a run of the graph on a dummy input (its output shape is symbolic)"
    manifest = build_manifest(info, class_names, opts, src.name, rows_from)
    dest = Path(out) if out is not None else src.with_suffix("")
    if (dest / "manifest.yaml").exists() and not force:
        raise YoloImportError(f"{dest} already holds a manifest.yaml; pass --force to overwrite")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest / manifest.model_file)
    write_manifest(manifest, dest)
    return dest
