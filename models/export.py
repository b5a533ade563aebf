"""ONNX export of the detector, with a parity check against PyTorch.

The exported graph has input "images" `[batch, 3, S, S]` (dynamic batch) and output "output0"
`[batch, 4 + nc, N]`, the YOLOv8 layout. BatchNorm is folded into the convolutions first. Parity
runs the PyTorch model that was exported (BatchNorm folded) and ONNX Runtime on the same tensors,
and fails when boxes differ by more than 1e-3 px or scores by more than 1e-4. Folding itself is a
float32 re-association: against the unfolded model boxes moved by up to 1.2e-3 px at 640 (measured
on a mid-training checkpoint), which is rounding, not a different model; mAP is measured on the
exported graph anyway.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from detserve.models.detector import Detector

BOX_TOLERANCE = 1e-3
SCORE_TOLERANCE = 1e-4
OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "output0"


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    input_size: int
    batch: int
    max_abs_diff_boxes: float
    max_abs_diff_scores: float

    def __str__(self) -> str:
        return (f"parity at {self.input_size}x{self.input_size}, batch {self.batch}: max abs diff "
                f"boxes {self.max_abs_diff_boxes:.3g} px (limit {BOX_TOLERANCE}), scores "
                f"{self.max_abs_diff_scores:.3g} (limit {SCORE_TOLERANCE})")


def _check_size(input_size: int) -> None:
    if input_size < 32 or input_size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {input_size}")


def export_onnx(model: Detector, path: str | Path, input_size: int, opset: int = OPSET) -> Path:
    """Write `model` (BatchNorm fused, on CPU) as ONNX at `input_size` with a dynamic batch."""
    _check_size(input_size)
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fused = copy.deepcopy(model).cpu().float().eval().fuse()
    example = torch.zeros(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    # The exporter narrates every stage on stdout/logging; keep the CLI output readable.
    with contextlib.redirect_stdout(io.StringIO()), quiet_logger("torch.onnx"), torch.no_grad():
        program = torch.onnx.export(
            fused, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},), optimize=True,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))
    onnx.checker.check_model(str(path))
    return path


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Logger `name` at `level` for the block, then as it was."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def parity_inputs(input_size: int, batch: int, seed: int = 0) -> np.ndarray:
    """Test tensors: noise, a flat grey (the letterbox pad value) and blocky colour images."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 3, input_size, input_size), dtype=np.float32)
    if batch > 1:
        x[1] = 114 / 255
    if batch > 2:
        blocks = rng.random((3, input_size // 16, input_size // 16), dtype=np.float32)
        x[2] = blocks.repeat(16, 1).repeat(16, 2)
    return x


def check_parity(model: Detector, onnx_path: str | Path, input_size: int, batch: int = 3,
                 seed: int = 0) -> ParityReport:
    """Run PyTorch and ONNX Runtime on the same tensors; raise ParityError beyond tolerance."""
    x = parity_inputs(input_size, batch, seed)
    eager = copy.deepcopy(model).cpu().float().eval().fuse()
    with torch.no_grad():
        expected = eager(torch.from_numpy(x)).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    if got.shape != expected.shape:
        raise ParityError(f"ONNX output shape {got.shape} != PyTorch output shape "
                          f"{expected.shape}")
    diff = np.abs(got - expected)
    report = ParityReport(input_size, batch, float(diff[:, :4].max()), float(diff[:, 4:].max()))
    if report.max_abs_diff_boxes > BOX_TOLERANCE or report.max_abs_diff_scores > SCORE_TOLERANCE:
        raise ParityError(f"ONNX Runtime and PyTorch disagree: {report}")
    return report


def export_with_parity(model: Detector, path: str | Path, input_size: int) -> ParityReport:
    export_onnx(model, path, input_size)
    return check_parity(model, path, input_size)
