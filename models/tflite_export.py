"""`detserve-model export-tflite`: a yolov8 package's ONNX graph to TFLite, FP32 and full INT8.

The conversion and the interpreter run in their own environment (`bash models/tflite_env.sh`
makes .venv-tflite: onnx2tf, tensorflow, ai-edge-litert; models/tflite_runner.py is what runs
there). This side, in the main environment, does what must be detserve's own: the server's
preprocessing (calibration and val tensors), ONNX Runtime as the reference, the yolov8 decoder
and NMS, and COCO metrics.

Both are converted from the package's model.onnx at batch 1 with its Splits given explicit
sizes (`explicit_splits`: onnx2tf mishandles opset 18's `num_outputs`). FP32 keeps the ONNX
output `[1, 4 + nc, N]`. INT8 is full integer (int8 builtin ops only, int8 weights per channel,
int8 activations, int8 input and outputs: TFLiteConverter on onnx2tf's SavedModel), calibrated
on the synthetic "calib" split (never val or test). Its graph is cut before the final Concat
into two outputs, boxes `[1, 4, N]` and scores `[1, nc, N]`: in one int8 tensor, boxes
(0..input size px and more) and sigmoid scores (0..1) would share one scale of a pixel or more,
which rounds every score to 0 or to one scale step (the pitfall models/quantize.py keeps its
float tail for). The host dequantizes and joins the two back into the yolov8 layout.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from detserve.engines.manifest import ModelPackage, load_package
from detserve.models.export import OUTPUT_NAME
from detserve.models.quantize import CalibrationSource, calibration_batches
from detserve.models.tflite_checks import (
    detections,
    metrics,
    raw_diff,
    report_markdown,
    round_like_outputs,
)

REPO = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "tflite_runner.py"
PYTHON_ENV = "DETSERVE_TFLITE_PYTHON"  # another interpreter than .venv-tflite/bin/python
DEFAULT_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
FP32_FILE, INT8_FILE, CHECKS_FILE, REPORT_FILE = ("model_fp32.tflite", "model_int8.tflite",
                                                  "checks.json", "report.md")  # fmt: skip
BOXES, SCORES = "boxes", "scores"
SAMPLE_IMAGES = 20  # calib-split scenes onnx2tf checks its conversion on (not a calibration)
FloatArray = npt.NDArray[np.float32]


class EnvMissingError(RuntimeError):
    """The TFLite environment is not there."""


def find_python(explicit: str | None = None) -> Path:
    """The TFLite environment's Python: `explicit`, $DETSERVE_TFLITE_PYTHON or .venv-tflite's."""
    chosen = explicit or os.environ.get(PYTHON_ENV)
    path = Path(chosen) if chosen else DEFAULT_PYTHON
    if not path.is_file():
        raise EnvMissingError(
            f"this needs the TFLite environment ({path} not found): run "
            f"`bash models/tflite_env.sh`, or set {PYTHON_ENV} to a Python with onnx2tf, "
            f"tensorflow-cpu and ai-edge-litert")
    return path


def check_package(package: ModelPackage) -> None:
    man = package.manifest
    if man.output_format != "yolov8" or man.nms != "host":
        raise ValueError(f"export-tflite takes a yolov8 package with host NMS; "
                         f"{str(package.root)!r} has output.format {man.output_format!r}, "
                         f"output.nms {man.nms!r}")  # fmt: skip
    if man.precision != "fp32":
        raise ValueError(f"export-tflite needs an fp32 package; {str(package.root)!r} has "
                         f"precision {man.precision!r}")  # fmt: skip


def split_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose final Concat (boxes..., scores) -> output0 becomes two outputs, `boxes`
    (the Concat of all but its last input) and `scores` (its last input)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
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


def runner(python: Path, *args: str) -> dict[str, Any]:
    """One tflite_runner command in the TFLite environment; its JSON, or its stderr's tail."""
    proc = subprocess.run([str(python), str(RUNNER), *args], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                               "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
                               "TF_NUM_INTEROP_THREADS": "1"})  # fmt: skip
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"tflite_runner {args[0]} failed (exit {proc.returncode}): {tail}")
    facts: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return facts


@dataclass(frozen=True)
class ValSet:
    tensors: FloatArray  # [n, 3, H, W], the server's preprocessing
    letterboxes: tuple[Any, ...]
    image_ids: tuple[int, ...]
    gt: dict[str, Any]
    dataset: str


def load_val(data: Path, package: ModelPackage, limit: int | None) -> ValSet:
    from detserve.engines.preprocess import prepare
    from detserve.models.coco import load_coco
    from detserve.models.evaluate import dataset_split

    coco = load_coco(data)
    if dataset_split(coco.raw) == "test":
        raise ValueError(f"{data} is the test split; the checks run on val")
    images = coco.images[:limit] if limit else coco.images
    prepared = [prepare(coco.read_rgb(i), package.manifest) for i in images]
    ids = {i.id for i in images}
    gt = {**coco.raw, "images": [i for i in coco.raw["images"] if int(i["id"]) in ids],
          "annotations": [a for a in coco.raw["annotations"] if int(a["image_id"]) in ids]}
    return ValSet(np.stack([p.tensor for p in prepared]), tuple(p.letterbox for p in prepared),
                  tuple(i.id for i in images), gt, str(coco.path))  # fmt: skip


def onnxruntime_outputs(package: ModelPackage, x: FloatArray, runs: int) -> tuple[FloatArray,
                                                                                  dict[str, Any]]:
    """ONNX Runtime (1 thread) on every image at batch 1: the reference outputs and timing."""
    from detserve.engines.ort import OrtEngine

    engine = OrtEngine(package, intra_op_threads=1)
    try:
        outs, times = [], []
        for i in range(len(x)):
            started = time.perf_counter()
            outs.append(np.asarray(engine.infer(x[i : i + 1])[0], np.float32)[0])
            times.append((time.perf_counter() - started) * 1e3)
    finally:
        engine.close()
    t = times[5 : 5 + runs] if len(times) > 5 else times
    return np.stack(outs), {"runs": len(t), "threads": 1, "batch": 1,
                            "ms_median": round(float(np.median(t)), 2),
                            "ms_p90": round(float(np.percentile(t, 90)), 2)}  # fmt: skip


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "load_average_1m_start": round(os.getloadavg()[0], 2)}


def _variant(python: Path, model: Path, val: ValSet, ref: FloatArray, inputs: Path,
             package: ModelPackage, runs: int, convert: Mapping[str, Any]) -> dict[str, Any]:
    rows = str(4 + package.manifest.num_classes)
    out = inputs.with_name(model.stem + "_out.npy")
    runner(python, "infer", "--model", str(model), "--inputs", str(inputs), "--out", str(out),
           "--rows", rows)
    got = np.load(out)
    bench = runner(python, "bench", "--model", str(model), "--inputs", str(inputs),
                   "--rows", rows, "--runs", str(runs))
    preds = detections(got, package.manifest, val.letterboxes, val.image_ids)
    serving, classes = package.manifest.postprocess.score_threshold, package.manifest.classes
    facts = {"file": model.name, "bytes": model.stat().st_size, "io": convert["io"],
             "convert_s": convert["convert_s"], "diff_vs_onnxruntime": raw_diff(ref, got, serving),
             "metrics": metrics(val.gt, preds, classes), "bench": bench}  # fmt: skip
    if any(o["quantization"] for o in convert["io"]["outputs"]):
        rounded = round_like_outputs(ref, convert["io"]["outputs"])
        facts["onnxruntime_with_output_rounding"] = metrics(
            val.gt, detections(rounded, package.manifest, val.letterboxes, val.image_ids), classes)
    return facts


NOTES = (
    "Input layout: the TFLite models take NHWC [1, H, W, 3] (onnx2tf transposes the NCHW "
    "graph); the host transposes the server's [3, H, W] tensor.",
    "FP32 output: [1, 4 + nc, N], the ONNX layout, float32.",
    "INT8 (full integer): int8 input (quantize at the host: x / scale + zero point; with "
    "scale 1/255 and zero point -128 that is pixel - 128, exact) and two int8 outputs, boxes "
    "[1, 4, N] and scores [1, nc, N], each with its own scale; the host dequantizes "
    "((q - zero point) * scale) and joins them into [1, 4 + nc, N] for the yolov8 decoder.",
)


def run(package_dir: str | Path, out_dir: Path, int8: bool, n: int, data: Path,
        limit: int | None = None, python: str | None = None, runs: int = 100,
        command: str = "") -> dict[str, Any]:
    """Export, check and report; writes the .tflite files, checks.json and report.md."""
    py = find_python(python)
    source = CalibrationSource("synthetic", n) if int8 else None  # checks --n
    package = load_package(package_dir)
    check_package(package)
    out_dir.mkdir(parents=True, exist_ok=True)
    val = load_val(data, package, limit)
    ref, ort_bench = onnxruntime_outputs(package, val.tensors, runs)
    results: dict[str, Any] = {
        "package": str(package.root), "command": command, "machine": machine(),
        "val": {"dataset": val.dataset, "images": len(val.image_ids)},
        "onnxruntime": {"bytes": package.model_path.stat().st_size, "bench": ort_bench,
                        "metrics": metrics(val.gt, detections(ref, package.manifest,
                                                              val.letterboxes, val.image_ids),
                                           package.manifest.classes)},
        "variants": {}, "notes": list(NOTES[: 3 if int8 else 2]),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        inputs, sample = Path(tmp) / "val_inputs.npy", Path(tmp) / "sample_nhwc.npy"
        np.save(inputs, val.tensors)
        np.save(sample, calib_nhwc(CalibrationSource("synthetic", SAMPLE_IMAGES), package))
        fp32_onnx = Path(tmp) / "model_fp32.onnx"
        onnx.save(explicit_splits(onnx.load(str(package.model_path))), str(fp32_onnx))
        conv = runner(py, "convert", "--onnx", str(fp32_onnx), "--out", str(out_dir / FP32_FILE),
                      "--sample", str(sample))
        results["versions"] = conv["versions"]
        results["variants"]["fp32"] = _variant(py, out_dir / FP32_FILE, val, ref, inputs,
                                               package, runs, conv)
        if source is not None:
            results["calibration"] = source.describe()
            conv = _convert_int8(py, package, source, sample, out_dir / INT8_FILE)
            results["variants"]["int8"] = _variant(py, out_dir / INT8_FILE, val, ref, inputs,
                                                   package, runs, conv)
    results["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    (out_dir / CHECKS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / REPORT_FILE).write_text(report_markdown(results))
    return results


def calib_nhwc(source: CalibrationSource, package: ModelPackage) -> FloatArray:
    """The calibration split's first `source.n` scenes, preprocessed, NHWC (onnx2tf's layout)."""
    batches = list(calibration_batches(source, package.manifest))
    return np.ascontiguousarray(np.concatenate(batches).transpose(0, 2, 3, 1))


def _convert_int8(python: Path, package: ModelPackage, source: CalibrationSource, sample: Path,
                  out: Path) -> dict[str, Any]:
    calib, split = sample.with_name("calib_nhwc.npy"), sample.with_name("model_split.onnx")
    np.save(calib, calib_nhwc(source, package))
    onnx.save(explicit_splits(split_outputs(onnx.load(str(package.model_path)))), str(split))
    return runner(python, "convert", "--onnx", str(split), "--out", str(out),
                  "--sample", str(sample), "--calib", str(calib))



def explicit_splits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy at batch 1 whose Split nodes name their sizes (a `split` input) instead of
    opset 18's `num_outputs`: onnx2tf 1.29 loses the channel layout after the latter (a
    C2f block's Concat came out [1, 48, 80, 80] and the next conv failed)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
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
