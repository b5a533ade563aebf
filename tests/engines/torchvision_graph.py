"""A small ONNX graph with torchvision's detector outputs `boxes, labels, scores`, built here.

It finds saturated blocks on a grid: the input `[B, 3, S, S]` is average-pooled into CELL-pixel
cells; a cell whose strongest channel mean is above FLOOR is a detection with that score, label
`channel + 1` (label 0 is torchvision's background) and the cell as its box, in input pixels.
Like a torchvision export it reads only image 0 of its input (the traced per-image loop of a
batch-1 export), its outputs have a data-dependent length N (NonZero), and its score floor is
fixed in the graph. The letterbox pad (114/255 = 0.447 in every channel) stays below FLOOR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from detserve.engines.manifest import Manifest, Postprocess, write_manifest

SIZE = 64
CELL = 16
FLOOR = 0.5
CLASSES = ("red", "green", "blue")


def _cell_boxes() -> np.ndarray:
    grid = SIZE // CELL
    gy, gx = np.divmod(np.arange(grid * grid), grid)  # cell index = gy * grid + gx
    return np.stack([gx * CELL, gy * CELL, gx * CELL + CELL, gy * CELL + CELL], 1).astype(
        np.float32
    )


def build_graph(outputs_per_image: int = 1) -> onnx.ModelProto:
    """The detector; `outputs_per_image` > 1 repeats the three outputs, as a batch-B trace does."""
    cells = (SIZE // CELL) ** 2
    consts = [
        numpy_helper.from_array(_cell_boxes(), "cell_boxes"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([3, cells], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array(FLOOR, np.float32), "floor"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
    ]
    nodes = [
        helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[CELL, CELL],
                         strides=[CELL, CELL]),
        helper.make_node("Gather", ["pooled", "zero"], ["first"], axis=0),
        helper.make_node("Reshape", ["first", "flat_shape"], ["flat"]),
        helper.make_node("ReduceMax", ["flat"], ["all_scores"], axes=[0], keepdims=0),
        helper.make_node("ArgMax", ["flat"], ["channel"], axis=0, keepdims=0),
        helper.make_node("Add", ["channel", "one"], ["all_labels"]),
        helper.make_node("Greater", ["all_scores", "floor"], ["mask"]),
        helper.make_node("NonZero", ["mask"], ["nz"]),
        helper.make_node("Reshape", ["nz", "minus_one"], ["idx"]),
        helper.make_node("Gather", ["cell_boxes", "idx"], ["boxes"], axis=0),
        helper.make_node("Gather", ["all_labels", "idx"], ["labels"], axis=0),
        helper.make_node("Gather", ["all_scores", "idx"], ["scores"], axis=0),
    ]
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"]),
    ]
    for k in range(1, outputs_per_image):
        for name in ("boxes", "labels", "scores"):
            nodes.append(helper.make_node("Identity", [name], [f"{name}_{k}"]))
            like = next(o for o in outputs[:3] if o.name == name)
            outputs.append(helper.make_tensor_value_info(
                f"{name}_{k}", like.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in like.type.tensor_type.shape.dim],
            ))  # fmt: skip
    graph = helper.make_graph(
        nodes, "blocks_torchvision",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        outputs, initializer=consts,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_package(root: Path, outputs_per_image: int = 1, max_batch_size: int = 4) -> Path:
    root.mkdir(parents=True)
    onnx.save(build_graph(outputs_per_image), str(root / "model.onnx"))
    manifest = Manifest(
        name="blocks_tv", version="1", classes=CLASSES, input_width=SIZE, input_height=SIZE,
        output_format="torchvision", nms="in-graph", max_batch_size=max_batch_size,
        postprocess=Postprocess(score_threshold=FLOOR, iou_threshold=0.5, max_detections=100),
    )  # fmt: skip
    write_manifest(manifest, root)
    return root
