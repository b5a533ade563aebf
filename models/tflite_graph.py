"""The ONNX graph surgery `detserve-model export-tflite` does before onnx2tf sees a graph.

- `explicit_splits`: batch 1, and Splits that name their sizes (onnx2tf mishandles opset 18's
  `num_outputs`).
- `cut_float_tail`: the graph cut where models/quantize.py's float tail begins (the detection
  head's last convs), into a body that becomes the full-INT8 TFLite model and a tail (DFL
  softmax + expectation, the anchor-grid decode to pixels, sigmoid, Concat) that runs in float
  on the host. Quantized in the graph, that tail was what cost INT8 its accuracy: the decoded
  boxes (pixels, 0..input size and beyond for background anchors) get one int8 step of several
  pixels, and sigmoid scores joined to them would share it (benchmarks/results/tflite).
- `whole_graph_split`: the control that keeps the tail in the int8 graph, only its final
  Concat cut into boxes and scores outputs so the scores keep their own scale.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from detserve.models.export import INPUT_NAME, OUTPUT_NAME
from detserve.models.quantize import _name_nodes, float_tail_nodes

BOXES, SCORES = "boxes", "scores"


def explicit_splits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy at batch 1 (input, outputs and every inferred shape) whose Split nodes name
    their sizes (a `split` input) instead of opset 18's `num_outputs`: onnx2tf 1.29 loses the
    channel layout after the latter (a C2f block's Concat came out [1, 48, 80, 80] and the
    next conv failed)."""
    out = _copy(model)
    for value in (out.graph.input[0], *out.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    del out.graph.value_info[:]  # the exporter's symbolic batch; inferred again at 1 below
    inferred = onnx.shape_inference.infer_shapes(out)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input]}  # fmt: skip
    for i, node in enumerate(out.graph.node):
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "Split" or "num_outputs" not in attrs:
            continue
        axis = helper.get_attribute_value(attrs["axis"]) if "axis" in attrs else 0
        size, parts = shapes[node.input[0]][axis], len(node.output)
        if size % parts:
            raise ValueError(f"Split {node.name!r}: {size} does not split in {parts} equal parts")
        name = f"split_sizes_{i}"
        out.graph.initializer.append(onnx.numpy_helper.from_array(
            np.full(parts, size // parts, np.int64), name))
        node.attribute.remove(attrs["num_outputs"])
        node.input.append(name)
    onnx.checker.check_model(out)
    return out


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def tail_inputs(model: onnx.ModelProto) -> list[str]:
    """The tensors the float tail reads from the rest of the graph (the head convs' outputs),
    in the order the graph makes them."""
    tail = set(float_tail_nodes(model))
    made_by_body = [o for n in model.graph.node if n.name not in tail for o in n.output]
    read_by_tail = {i for n in model.graph.node if n.name in tail for i in n.input}
    return [name for name in made_by_body if name in read_by_tail]


def cut_float_tail(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(body, tail) of a batch-1 yolov8 graph: body `images` -> the head convs' outputs,
    tail those outputs -> `output0`. Running the tail on the body's outputs gives the graph's
    `output0`."""
    if [o.name for o in model.graph.output] != [OUTPUT_NAME]:
        raise ValueError(f"expected one output {OUTPUT_NAME!r}; cannot cut this graph")
    model = _copy(model)
    _name_nodes(model)  # float_tail_nodes tells nodes apart by name
    cut = tail_inputs(model)
    if not cut:
        raise ValueError("no float tail found before the output; cannot cut this graph")
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
    body = extractor.extract_model([INPUT_NAME], cut)
    tail = extractor.extract_model(cut, [OUTPUT_NAME])
    for part in (body, tail):
        onnx.checker.check_model(part)
    return body, tail


def whole_graph_split(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose final Concat (boxes..., scores) -> output0 becomes two outputs, `boxes`
    (the Concat of all but its last input) and `scores` (its last input)."""
    out = _copy(model)
    g = out.graph
    concat = [n for n in g.node if OUTPUT_NAME in n.output]
    if len(g.output) != 1 or len(concat) != 1 or concat[0].op_type != "Concat" \
            or len(concat[0].input) < 2:
        raise ValueError(f"expected one output {OUTPUT_NAME!r} made by a Concat of boxes and "
                         f"scores; cannot split this graph")  # fmt: skip
    node, old = concat[0], g.output[0]
    scores_in = node.input[-1]
    del node.input[-1]
    node.output[0] = BOXES
    g.node.append(helper.make_node("Identity", [scores_in], [SCORES], name="scores_identity"))
    dims = old.type.tensor_type.shape.dim
    batch = dims[0].dim_param or dims[0].dim_value
    anchors = dims[2].dim_value
    g.output.remove(old)
    g.output.extend([
        helper.make_tensor_value_info(BOXES, onnx.TensorProto.FLOAT, [batch, 4, anchors]),
        helper.make_tensor_value_info(SCORES, onnx.TensorProto.FLOAT,
                                      [batch, dims[1].dim_value - 4, anchors]),
    ])  # fmt: skip
    onnx.checker.check_model(out)
    return out
