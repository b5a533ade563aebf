"""A QAT model (`detserve.models.qat`) as a package: ONNX Runtime QDQ or OpenVINO INT8 IR.

Both are the fine-tuned fake-quant model itself, with the ranges it learned, not a re-calibration:
- onnxruntime: `torch.onnx.export` (TorchScript exporter, which knows NNCF's export symbolics)
  with every quantizer in NNCF's ONNX mode, so each fake-quant becomes a QuantizeLinear +
  DequantizeLinear pair (int8 weights per output channel, uint8/int8 activations per tensor).
  NNCF quantizes the inputs of convolutions (and of adds and concats where it deems them
  quantizable), where ONNX Runtime's own PTQ quantizes every tensor; the placement differs.
- openvino: `openvino.convert_model` on the torch model, which turns NNCF's fake-quant into
  FakeQuantize ops, the same form as the NNCF PTQ IR that is served.
The batch axis is dynamic in both, as in the PTQ packages.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from detserve.engines.manifest import write_manifest
from detserve.models.export import INPUT_NAME, OUTPUT_NAME, quiet_logger
from detserve.models.package import machine_description
from detserve.models.qat import FLOAT_PATTERNS, QatRun
from detserve.models.quantize import _check_out, _derived_metadata

ENGINES = ("onnxruntime", "openvino")
QDQ_OPSET = 17
IR_FILE = "model.xml"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class QatPackageResult:
    package: Path
    engine: str
    quantize_ops: int  # QuantizeLinear (onnxruntime) or FakeQuantize (openvino) ops
    steps: int


def _quantizers(model: torch.nn.Module) -> list[Any]:
    from nncf.torch.quantization.layers import BaseQuantizer

    return [m for m in model.modules() if isinstance(m, BaseQuantizer)]


@contextlib.contextmanager
def _no_trace_warnings() -> Iterator[None]:
    """Both exports trace the model. The tracer's own check compares the trace (quantizers in
    export form, integer zero points) with the training-form forward and warns at every rounding
    difference, NNCF's scalar reads warn per quantizer, and torch flags its TorchScript exporter
    as deprecated (it is the one that knows NNCF's export symbolics); none is news to the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_qdq_onnx(run: QatRun, path: Path) -> int:
    """Write the model as QDQ ONNX; returns its QuantizeLinear count."""
    import onnx
    from nncf.torch.quantization.layers import QuantizerExportMode

    quantizers = _quantizers(run.model)
    for q in quantizers:
        q.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    x = torch.zeros(1, 3, run.package.manifest.input_height, run.package.manifest.input_width)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_logger("torch.onnx"), \
                torch.no_grad(), _no_trace_warnings():
            torch.onnx.export(run.model, (x,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              opset_version=QDQ_OPSET, dynamo=False)  # fmt: skip
    finally:
        for q in quantizers:
            q.set_export_mode(QuantizerExportMode.FAKE_QUANTIZE)
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(str(path))
    return sum(n.op_type == "QuantizeLinear" for n in graph.node)


def export_openvino_ir(run: QatRun, path: Path) -> int:
    """Write the model as an OpenVINO IR (dynamic batch); returns its FakeQuantize count."""
    import openvino as ov

    m = run.package.manifest
    x = torch.zeros(1, 3, m.input_height, m.input_width)
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad(), _no_trace_warnings():
        ir = ov.convert_model(run.model, example_input=x,
                              input=[ov.PartialShape([-1, 3, m.input_height, m.input_width])])
    ir.inputs[0].get_tensor().set_names({INPUT_NAME})
    ir.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    # No fp16 compression: the float tail's box arithmetic keeps full precision.
    ov.save_model(ir, str(path), compress_to_fp16=False)
    return sum(op.get_type_name() == "FakeQuantize" for op in ir.get_ordered_ops())


def qat_metadata(run: QatRun, engine: str, quantize_ops: int) -> dict[str, Any]:
    """What the manifest says about how the package was made."""
    import nncf

    cfg = run.config
    tool = (f"nncf {nncf.__version__} quantize (torch), then {run.steps} steps of "
            "quantization-aware fine-tuning" if run.steps else
            f"nncf {nncf.__version__} quantize (torch, post-training, no fine-tune)")  # fmt: skip
    tail = run.losses[-50:]
    return {
        "calibration": {**run.calibration, "subset_size": run.calibration.get("images")},
        "quantization": {
            "tool": tool, "preset": cfg.preset,
            "format": "QDQ (QuantizeLinear/DequantizeLinear pairs)" if engine == "onnxruntime"
            else "OpenVINO IR with FakeQuantize",
            "weights": "int8 symmetric, per output channel",
            "activations": "asymmetric, per tensor" if cfg.preset == "mixed"
            else "symmetric, per tensor",
            "float_scope": list(FLOAT_PATTERNS),
            "float_scope_is": "decode tail (DFL softmax + fixed conv, anchors, sigmoid, concat) "
                              "and the six predictor convs",
            "quantize_ops": quantize_ops,
        },
        "qat": {
            "steps": run.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "warmup_steps": cfg.warmup_steps,
            "schedule": "linear warmup, then cosine to 0 over the steps",
            "optimizer": "AdamW, weight decay 0, grad-norm clip 10; weights and quantizer "
                         "ranges trained together (straight-through estimator)",
            "seed": cfg.seed,
            "train_data": f"render_pool('train', {cfg.train_scenes}, TRAIN_SIZES, max_side "
                          f"{cfg.max_side}) = scenes.split_seeds('train', {cfg.train_scenes}), "
                          "train's augmentation (AugmentConfig at the input size); no val "
                          "or test scenes",
            "loss": "train's DetectionLoss (box CIoU + class BCE + DFL)",
            "loss_first": run.losses[0] if run.losses else None,
            "loss_last_50_mean": sum(tail) / len(tail) if tail else None,
            "fine_tune_seconds": round(run.seconds, 1), "threads": cfg.threads,
            # machine_description states the trainer's fixed 2 threads; say this run's.
            "machine": machine_description().replace("set_num_threads(2)",
                                                     f"set_num_threads({cfg.threads})"),
        },
    }  # fmt: skip


def write_qat_package(run: QatRun, out_dir: str | Path, engine: str) -> QatPackageResult:
    """Write `run`'s model as an int8 package for `engine` in `out_dir`."""
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {list(ENGINES)}, got {engine!r}")
    out = Path(out_dir)
    _check_out(run.package, out)
    out.mkdir(parents=True, exist_ok=True)
    if engine == "onnxruntime":
        model_file, count = ONNX_FILE, export_qdq_onnx(run, out / ONNX_FILE)
    else:
        model_file, count = IR_FILE, export_openvino_ir(run, out / IR_FILE)
    meta = _derived_metadata(run.package.manifest, qat_metadata(run, engine, count))
    manifest = replace(run.package.manifest, model_file=model_file, precision="int8",
                       metadata=meta)  # fmt: skip
    write_manifest(manifest, out)
    return QatPackageResult(out, engine, count, run.steps)
