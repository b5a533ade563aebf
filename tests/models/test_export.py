from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from detserve.models.detector import STRIDES, DetectorConfig, build_detector
from detserve.models.export import (
    BOX_TOLERANCE,
    SCORE_TOLERANCE,
    ParityError,
    check_parity,
    export_onnx,
    parity_inputs,
)

TINY = DetectorConfig(num_classes=3, width_mult=0.25, depth_mult=0.34)
SIZE = 64


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_detector(TINY).eval()
    gen = torch.Generator().manual_seed(1)
    for mod in m.modules():  # non-trivial BatchNorm statistics, so fusing is exercised
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            cast(torch.Tensor, mod.running_mean).copy_(torch.randn(n, generator=gen) * 0.1)
            cast(torch.Tensor, mod.running_var).copy_(torch.rand(n, generator=gen) + 0.5)
    return m


@pytest.fixture(scope="module")
def onnx_path(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("export") / "m.onnx", SIZE)  # type: ignore[arg-type]


def test_graph_has_yolov8_io_and_dynamic_batch(onnx_path: Path) -> None:
    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["output0"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param != ""
    ops = {n.op_type for n in graph.node}
    assert "BatchNormalization" not in ops
    assert onnx.load(str(onnx_path)).opset_import[0].version >= 17
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    n = sum((SIZE // s) ** 2 for s in STRIDES)
    for batch in (1, 4):
        (out,) = session.run(None, {"images": np.zeros((batch, 3, SIZE, SIZE), np.float32)})
        assert out.shape == (batch, 4 + 3, n)


def test_parity_within_tolerance(model: torch.nn.Module, onnx_path: Path) -> None:
    report = check_parity(model, onnx_path, SIZE)  # type: ignore[arg-type]
    assert report.batch == 3 and report.input_size == SIZE
    assert 0 <= report.max_abs_diff_boxes <= BOX_TOLERANCE
    assert 0 <= report.max_abs_diff_scores <= SCORE_TOLERANCE
    assert "max abs diff boxes" in str(report)


def test_parity_fails_when_the_graph_differs(model: torch.nn.Module, onnx_path: Path,
                                            tmp_path: Path) -> None:
    proto = onnx.load(str(onnx_path))
    # Perturb the largest convolution weight: a real export bug would look like this.
    biggest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(biggest).copy()
    arr += 0.05
    biggest.CopyFrom(numpy_helper.from_array(arr, biggest.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ParityError, match="disagree"):
        check_parity(model, bad, SIZE)  # type: ignore[arg-type]


def test_parity_inputs_are_deterministic_and_varied() -> None:
    a, b = parity_inputs(64, 3, seed=5), parity_inputs(64, 3, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 3, 64, 64)
    assert float(a[1].max() - a[1].min()) == 0.0 and float(a[0].std()) > 0.1


def test_export_rejects_bad_size_and_opset(model: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32, got 100"):
        export_onnx(model, tmp_path / "x.onnx", 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opset must be >= 17, got 13"):
        export_onnx(model, tmp_path / "x.onnx", 64, opset=13)  # type: ignore[arg-type]
