"""Append NMS to a yolov8-layout ONNX graph ([B, 4 + nc, N] -> EfficientNMS's four outputs).

Two targets, one contract (the `end2end` output format):
- `ort`: standard ONNX ops that ONNX Runtime runs on the CPU. It reproduces EfficientNMS
  semantics exactly (see `efficient_nms_ref`): threshold with `>=`, top 4096 (anchor, class)
  pairs, class-aware greedy suppression at IoU `>=` threshold, top `max_output_boxes`, zero
  padding. ORT's NonMaxSuppression sorts with a heap that ignores indices and suppresses at
  IoU `>` threshold, so the graph (a) ranks candidates itself with TopK (ties: lower flat index
  first) and hands NMS strictly decreasing rank scores, and (b) passes the largest float32 below
  the IoU threshold, which turns `>` into `>=`.
- `tensorrt`: one `EfficientNMS_TRT` node (onnx-graphsurgeon) fed by a transpose and two slices;
  only TensorRT (with its plugins initialised) can run it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from detserve.engines.manifest import Manifest, Postprocess, load_package, write_manifest
from detserve.models.efficient_nms_ref import PRE_NMS_TOP_K, NmsConfig

Target = Literal["ort", "tensorrt"]
TARGETS: tuple[str, ...] = ("ort", "tensorrt")
OUTPUT_NAMES = ("num_dets", "det_boxes", "det_scores", "det_classes")
MIN_OPSET = 13  # ReduceSum with axes as an input
_P = "nms/"  # prefix of every name this module adds


@dataclass(frozen=True)
class Yolov8Output:
    """The graph's single yolov8 output: its name, batch dim and class count."""

    name: str
    batch_dim: str | int
    num_classes: int
    anchors: str | int


def inspect_yolov8(model: onnx.ModelProto, num_classes: int | None = None) -> Yolov8Output:
    """Check that `model` has one output shaped [B, 4 + nc, N] and describe it.

    A symbolic row count (e.g. a TorchScript export) is resolved with `num_classes` (from the
    manifest); a fixed one must agree with it.
    """
    outputs = model.graph.output
    if len(outputs) != 1:
        names = [o.name for o in outputs]
        raise ValueError(f"a yolov8 graph has exactly one output, this one has {names}")
    out = outputs[0]
    dims = out.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    rows = dims[1].dim_value if len(dims) == 3 and dims[1].HasField("dim_value") else None
    if rows is None and len(dims) == 3 and num_classes is not None:
        rows = 4 + num_classes
    if rows is None or rows < 5 or (num_classes is not None and rows != 4 + num_classes):
        want = "4 + nc >= 5" if num_classes is None else f"4 + {num_classes} classes"
        raise ValueError(f"output {out.name!r} must have shape [B, {want}, N], got {shape}")
    return Yolov8Output(out.name, _dim(dims[0], "batch"), rows - 4, _dim(dims[2], "anchors"))


def _dim(dim: onnx.TensorShapeProto.Dimension, fallback: str) -> str | int:
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or fallback)


def _const(name: str, value: Any, dtype: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), _P + name)


def _node(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=_P + outputs[0].removeprefix(_P), **attrs)


def _split_nodes(raw: str) -> list[onnx.NodeProto]:
    """[B, 4+nc, N] -> corners [B, N, 4] (x1 y1 x2 y2) and scores [B, N, C]."""
    p = _P
    return [
        _node("Transpose", [raw], [p + "t"], perm=[0, 2, 1]),
        _node("Slice", [p + "t", p + "i0", p + "i2", p + "ax2"], [p + "cxcy"]),
        _node("Slice", [p + "t", p + "i2", p + "i4", p + "ax2"], [p + "wh"]),
        _node("Slice", [p + "t", p + "i4", p + "imax", p + "ax2"], [p + "scores"]),
        _node("Mul", [p + "wh", p + "half"], [p + "half_wh"]),
        _node("Sub", [p + "cxcy", p + "half_wh"], [p + "x1y1"]),
        _node("Add", [p + "cxcy", p + "half_wh"], [p + "x2y2"]),
        _node("Concat", [p + "x1y1", p + "x2y2"], [p + "corners"], axis=2),
    ]


def _topk_nodes() -> list[onnx.NodeProto]:
    """Flatten scores anchor-major, drop those under the threshold, keep the best 4096."""
    p = _P
    return [
        _node("Reshape", [p + "scores", p + "flat_shape"], [p + "flat"]),
        _node("GreaterOrEqual", [p + "flat", p + "score_thr"], [p + "passes"]),
        _node("Where", [p + "passes", p + "flat", p + "minus1"], [p + "masked"]),
        # Padding guarantees TopK(4096) works when N * C is smaller.
        _node("Pad", [p + "masked", p + "pre_pads", p + "minus1"], [p + "padded"]),
        _node(
            "TopK",
            [p + "padded", p + "pre_k"],
            [p + "cand_scores", p + "cand_idx"],
            axis=1,
            largest=1,
            sorted=1,
        ),
        _node("GreaterOrEqual", [p + "cand_scores", p + "score_thr"], [p + "cand_valid"]),
        _node("Shape", [p + "scores"], [p + "scores_shape"]),
        _node("Slice", [p + "scores_shape", p + "i2", p + "i3", p + "ax0"], [p + "nc"]),
        _node("Slice", [p + "scores_shape", p + "i1", p + "i2", p + "ax0"], [p + "n"]),
        _node("Div", [p + "cand_idx", p + "nc"], [p + "anchor_raw"]),
        _node("Sub", [p + "n", p + "i1"], [p + "last_anchor"]),
        _node("Min", [p + "anchor_raw", p + "last_anchor"], [p + "cand_anchor"]),
        _node("Mod", [p + "cand_idx", p + "nc"], [p + "cand_class"]),
        _node("Unsqueeze", [p + "cand_anchor", p + "ax2"], [p + "anchor3"]),
        _node("Expand", [p + "anchor3", p + "box_bcast"], [p + "anchor_idx4"]),
        _node("GatherElements", [p + "corners", p + "anchor_idx4"], [p + "cand_boxes"], axis=1),
    ]


def _nms_nodes(class_agnostic: bool) -> list[onnx.NodeProto]:
    """Greedy NMS over the ranked candidates with rank scores (strict order, no ties)."""
    p = _P
    nodes = [
        _node("Where", [p + "cand_valid", p + "rank_score", p + "zero"], [p + "rank"]),
        _node("Unsqueeze", [p + "rank", p + "ax1"], [p + "rank3"]),
    ]
    if class_agnostic:
        nodes.append(_node("Identity", [p + "rank3"], [p + "nms_scores"]))
    else:
        nodes += [
            _node("Squeeze", [p + "nc", p + "ax0"], [p + "nc_scalar"]),
            _node("Range", [p + "zero_i", p + "nc_scalar", p + "one_i"], [p + "class_range"]),
            _node("Reshape", [p + "class_range", p + "class_col"], [p + "class_col3"]),
            _node("Unsqueeze", [p + "cand_class", p + "ax1"], [p + "cand_class3"]),
            _node("Equal", [p + "cand_class3", p + "class_col3"], [p + "onehot"]),
            _node("Where", [p + "onehot", p + "rank3", p + "zero"], [p + "nms_scores"]),
        ]
    nodes += [
        _node(
            "NonMaxSuppression",
            [p + "cand_boxes", p + "nms_scores", p + "max_k", p + "iou_thr", p + "half"],
            [p + "selected"],
            center_point_box=0,
        ),
        _node("Gather", [p + "selected", p + "sel_cols"], [p + "sel_bm"], axis=1),
        _node("Shape", [p + "selected"], [p + "sel_shape"]),
        _node("Slice", [p + "sel_shape", p + "i0", p + "i1", p + "ax0"], [p + "n_sel"]),
        _node(
            "ConstantOfShape",
            [p + "n_sel"],
            [p + "ones"],
            value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
        ),
        _node("Mul", [p + "rank", p + "zero"], [p + "zeros_bm"]),
        _node("ScatterND", [p + "zeros_bm", p + "sel_bm", p + "ones"], [p + "kept"]),
    ]
    return nodes


def _output_nodes() -> list[onnx.NodeProto]:
    """Kept candidates in rank order, cut at K, padded with zeros."""
    p = _P
    num, boxes, scores, classes = OUTPUT_NAMES
    return [
        _node("Greater", [p + "kept", p + "zero"], [p + "kept_b"]),
        _node("Where", [p + "kept_b", p + "rank", p + "minus1"], [p + "order_key"]),
        _node(
            "TopK",
            [p + "order_key", p + "max_k"],
            [p + "final_key", p + "final_idx"],
            axis=1,
            largest=1,
            sorted=1,
        ),
        _node("Greater", [p + "final_key", p + "zero"], [p + "final_valid"]),
        _node("Cast", [p + "final_valid"], [p + "valid_i32"], to=TensorProto.INT32),
        _node("ReduceSum", [p + "valid_i32", p + "ax1"], [num], keepdims=1),
        _node("GatherElements", [p + "cand_scores", p + "final_idx"], [p + "g_scores"], axis=1),
        _node("Where", [p + "final_valid", p + "g_scores", p + "zero"], [scores]),
        _node("GatherElements", [p + "cand_class", p + "final_idx"], [p + "g_class"], axis=1),
        _node("Where", [p + "final_valid", p + "g_class", p + "zero_i"], [p + "class64"]),
        _node("Cast", [p + "class64"], [classes], to=TensorProto.INT32),
        _node("Unsqueeze", [p + "final_idx", p + "ax2"], [p + "final_idx3"]),
        _node("Expand", [p + "final_idx3", p + "box_bcast"], [p + "final_idx4"]),
        _node("GatherElements", [p + "cand_boxes", p + "final_idx4"], [p + "g_boxes"], axis=1),
        _node("Unsqueeze", [p + "final_valid", p + "ax2"], [p + "final_valid3"]),
        _node("Where", [p + "final_valid3", p + "g_boxes", p + "zero"], [boxes]),
    ]


def _constants(cfg: NmsConfig) -> list[onnx.TensorProto]:
    top_k = cfg.pre_nms_top_k
    iou_lt = np.nextafter(np.float32(cfg.iou_threshold), np.float32(-np.inf))
    i64, f32 = np.int64, np.float32
    return [
        _const("i0", [0], i64),
        _const("i1", [1], i64),
        _const("i2", [2], i64),
        _const("i3", [3], i64),
        _const("i4", [4], i64),
        _const("imax", [np.iinfo(np.int64).max], i64),
        _const("ax0", [0], i64),
        _const("ax1", [1], i64),
        _const("ax2", [2], i64),
        _const("half", [0.5], f32),
        _const("zero", 0.0, f32),
        _const("minus1", -1.0, f32),
        _const("zero_i", 0, i64),
        _const("one_i", 1, i64),
        _const("flat_shape", [0, -1], i64),
        _const("score_thr", cfg.score_threshold, f32),
        _const("pre_pads", [0, 0, 0, top_k], i64),
        _const("pre_k", [top_k], i64),
        _const("box_bcast", [1, 1, 4], i64),
        # Rank scores: the best candidate gets 4096, the next 4095, ...; invalid ones get 0.
        _const("rank_score", np.arange(top_k, 0, -1), f32),
        _const("class_col", [1, -1, 1], i64),
        _const("max_k", [cfg.max_output_boxes], i64),
        _const("iou_thr", [iou_lt], f32),
        _const("sel_cols", [0, 2], i64),
    ]


def _output_infos(batch: str | int, k: int) -> list[onnx.ValueInfoProto]:
    num, boxes, scores, classes = OUTPUT_NAMES
    mk = helper.make_tensor_value_info
    return [
        mk(num, TensorProto.INT32, [batch, 1]),
        mk(boxes, TensorProto.FLOAT, [batch, k, 4]),
        mk(scores, TensorProto.FLOAT, [batch, k]),
        mk(classes, TensorProto.INT32, [batch, k]),
    ]


def _at_least_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version >= MIN_OPSET:
        return model
    return onnx.version_converter.convert_version(model, MIN_OPSET)


def add_nms_ort(
    model: onnx.ModelProto, cfg: NmsConfig, num_classes: int | None = None
) -> onnx.ModelProto:
    """A copy of `model` whose outputs are EfficientNMS's four, computed with standard ops."""
    if cfg.box_coding != "center_size":
        raise ValueError(f"yolov8 boxes are centre-size; box_coding was {cfg.box_coding!r}")
    if cfg.background_class != -1:
        raise ValueError(
            f"the ort target supports background_class -1 only, got {cfg.background_class}"
        )
    out = inspect_yolov8(model, num_classes)
    result = _at_least_opset(model)
    result = onnx.ModelProto.FromString(result.SerializeToString())
    graph = result.graph
    graph.node.extend(
        _split_nodes(out.name) + _topk_nodes() + _nms_nodes(cfg.class_agnostic) + _output_nodes()
    )
    graph.initializer.extend(_constants(cfg))
    del graph.output[:]
    graph.output.extend(_output_infos(out.batch_dim, cfg.max_output_boxes))
    onnx.checker.check_model(result)
    return result


def add_nms_tensorrt(
    model: onnx.ModelProto, cfg: NmsConfig, num_classes: int | None = None
) -> onnx.ModelProto:
    """A copy of `model` ending in an EfficientNMS_TRT node (TensorRT only)."""
    import onnx_graphsurgeon as gs

    out = inspect_yolov8(model, num_classes)
    graph = gs.import_onnx(model)
    raw = graph.outputs[0]
    batch = out.batch_dim
    t = graph.layer(
        op="Transpose",
        name=_P + "transpose",
        inputs=[raw],
        outputs=[gs.Variable(_P + "t", np.float32)],
        attrs={"perm": [0, 2, 1]},
    )[0]

    def _slice(name: str, start: int, end: int, last: int) -> Any:
        ins = [
            t,
            gs.Constant(_P + name + "_s", np.array([start], np.int64)),
            gs.Constant(_P + name + "_e", np.array([end], np.int64)),
            gs.Constant(_P + name + "_a", np.array([2], np.int64)),
        ]
        var = gs.Variable(_P + name, np.float32, [batch, out.anchors, last])
        return graph.layer(op="Slice", name=_P + "slice_" + name, inputs=ins, outputs=[var])[0]

    boxes = _slice("boxes", 0, 4, 4)
    scores = _slice("scores", 4, 4 + out.num_classes, out.num_classes)
    k = cfg.max_output_boxes
    outputs = [
        gs.Variable(OUTPUT_NAMES[0], np.int32, [batch, 1]),
        gs.Variable(OUTPUT_NAMES[1], np.float32, [batch, k, 4]),
        gs.Variable(OUTPUT_NAMES[2], np.float32, [batch, k]),
        gs.Variable(OUTPUT_NAMES[3], np.int32, [batch, k]),
    ]
    graph.layer(
        op="EfficientNMS_TRT",
        name=_P + "efficient_nms",
        inputs=[boxes, scores],
        outputs=outputs,
        attrs=tensorrt_attrs(cfg),
    )
    graph.outputs = outputs
    graph.cleanup().toposort()
    result: onnx.ModelProto = gs.export_onnx(graph)
    return result


def tensorrt_attrs(cfg: NmsConfig) -> dict[str, Any]:
    """The EfficientNMS_TRT attributes for `cfg` (plugin README's parameter table)."""
    return {
        "plugin_version": "1",
        "background_class": cfg.background_class,
        "max_output_boxes": cfg.max_output_boxes,
        "score_threshold": float(cfg.score_threshold),
        "iou_threshold": float(cfg.iou_threshold),
        "score_activation": 0,  # yolov8 scores are already sigmoid outputs
        "class_agnostic": int(cfg.class_agnostic),
        "box_coding": 1 if cfg.box_coding == "center_size" else 0,
    }


def end2end_manifest(src: Manifest, cfg: NmsConfig, target: Target) -> Manifest:
    """The manifest of the NMS package: end2end outputs with the baked-in NMS settings."""
    meta = {k: v for k, v in src.metadata.items() if k != "torch_checkpoint"}
    meta["nms_graph"] = {
        "target": target,
        "runs_on": "onnxruntime" if target == "ort" else "tensorrt",
        "score_threshold": cfg.score_threshold,
        "iou_threshold": cfg.iou_threshold,
        "max_output_boxes": cfg.max_output_boxes,
        "pre_nms_top_k": cfg.pre_nms_top_k,
        "class_agnostic": cfg.class_agnostic,
        "semantics": "EfficientNMS_TRT plugin_version 1 (score >= thr, IoU >= thr)",
    }
    post = Postprocess(
        score_threshold=cfg.score_threshold,
        iou_threshold=cfg.iou_threshold,
        max_detections=cfg.max_output_boxes,
        pre_nms_top_k=cfg.pre_nms_top_k,
    )
    return replace(src, output_format="end2end", nms="in-graph", postprocess=post, metadata=meta)


def add_nms_package(src_dir: Path, out_dir: Path, target: Target, cfg: NmsConfig) -> Path:
    """Read the yolov8 package at `src_dir`, write the end2end package to `out_dir`."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    package = load_package(src_dir)
    if package.manifest.output_format != "yolov8":
        raise ValueError(
            f"add-nms needs a yolov8-format package; {str(src_dir)!r} has output format "
            f"{package.manifest.output_format!r}"
        )
    if out_dir.resolve() == package.root.resolve():
        raise ValueError(f"--out must differ from the source package directory {str(src_dir)!r}")
    model = onnx.load(str(package.model_path))
    build = add_nms_ort if target == "ort" else add_nms_tensorrt
    result = build(model, cfg, package.manifest.num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(result, str(out_dir / package.manifest.model_file))
    write_manifest(end2end_manifest(package.manifest, cfg, target), out_dir)
    card = package.root / "MODEL_CARD.md"
    if card.is_file():
        shutil.copyfile(card, out_dir / "MODEL_CARD.md")
    return out_dir


def default_config(manifest: Manifest, **overrides: Any) -> NmsConfig:
    """NMS settings from the manifest's postprocess section, with CLI overrides."""
    post = manifest.postprocess
    values: dict[str, Any] = {
        "score_threshold": post.score_threshold,
        "iou_threshold": post.iou_threshold,
        "max_output_boxes": post.max_detections,
        "pre_nms_top_k": PRE_NMS_TOP_K,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return NmsConfig(**values)
