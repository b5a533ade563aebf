"""Shared test fixtures.

`tiny_package` is a real model package whose ONNX graph is built here, small enough for any test:
the "blocks" detector. It splits the input into 32x32 cells and scores each cell, per class, by the
mean of one colour channel (red, green, blue) after /255 scaling. A saturated red 32x32 block that
sits exactly on a cell therefore comes out as class 0 ("red") with score 1.0 and the cell's box,
which gives tests a detector whose right answer is known in advance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from detserve.engines.manifest import Manifest, Postprocess, write_manifest

BLOCK_CLASSES = ("red", "green", "blue")
CELL = 32


def build_blocks_onnx(width: int, height: int) -> onnx.ModelProto:
    """The blocks graph at input `width` x `height` (multiples of 32), dynamic batch."""
    if width % CELL or height % CELL:
        raise ValueError(f"input size must be a multiple of {CELL}, got {width}x{height}")
    gw, gh = width // CELL, height // CELL
    ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    cx = (xs.reshape(-1) + 0.5) * CELL
    cy = (ys.reshape(-1) + 0.5) * CELL
    wh = np.full(gw * gh, CELL, np.float32)
    boxes = np.stack([cx, cy, wh, wh]).astype(np.float32)[None]  # [1, 4, N]
    nodes = [
        helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[CELL, CELL],
                         strides=[CELL, CELL]),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["scores"]),
        helper.make_node("ReduceSum", ["scores", "axis1"], ["sum1"], keepdims=1),
        helper.make_node("Mul", ["sum1", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "boxes"], ["batched_boxes"]),
        helper.make_node("Concat", ["batched_boxes", "scores"], ["output0"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, 3, gw * gh], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(boxes, "boxes"),
    ]
    graph = helper.make_graph(
        nodes,
        "blocks",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 7, gw * gh])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_blocks_package(root: Path, width: int = 64, height: int = 64, name: str = "blocks",
                         version: str = "1") -> Path:
    """Write the blocks model package into `root`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(build_blocks_onnx(width, height), str(root / "model.onnx"))
    manifest = Manifest(
        name=name,
        version=version,
        classes=BLOCK_CLASSES,
        input_width=width,
        input_height=height,
        input_name="images",
        postprocess=Postprocess(score_threshold=0.6, iou_threshold=0.5, max_detections=100),
    )
    write_manifest(manifest, root)
    return root


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the 64x64 blocks package."""
    return write_blocks_package(tmp_path_factory.mktemp("blocks64"))


@pytest.fixture(scope="session")
def tiny_package_128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the blocks package at 128x128 (a second resolution variant)."""
    return write_blocks_package(tmp_path_factory.mktemp("blocks128"), 128, 128)
