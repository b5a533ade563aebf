"""`detserve-model export-tflite`: a yolov8 package's ONNX graph to TFLite, FP32 and full INT8.

The conversion and the interpreter run in their own environment (`bash models/tflite_env.sh`
makes .venv-tflite: onnx2tf, tensorflow, ai-edge-litert; models/tflite_runner.py is what runs
there). This side, in the main environment, does what must be detserve's own: the server's
preprocessing (calibration and val tensors), ONNX Runtime as the reference, the yolov8 decoder
and NMS, and COCO metrics.

Both are converted from the package's model.onnx at batch 1 with its Splits given explicit
sizes (models/tflite_graph.py). FP32 is the whole graph, output `[1, 4 + nc, N]`. INT8 is full
integer (int8 builtin ops only, int8 weights per channel, int8 activations, int8 input and
outputs: TFLiteConverter on onnx2tf's SavedModel), calibrated on the synthetic "calib" split
(never val or test), and is the graph up to the detection head's last convs: its outputs are
those convs' box-distribution and class logits, one int8 tensor per level and branch, each
with its own scale. The decode tail (DFL softmax and expectation, anchor grid to pixels,
sigmoid; models/quantize.py's float tail, the part ORT INT8 keeps float too) runs in float on
the host (model_int8_tail.onnx, onnxruntime). With the tail quantized inside the graph
(`--whole-graph-control`, the control) the decoded boxes get one int8 step of several pixels.
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

from detserve.engines.manifest import ModelPackage, load_package
from detserve.models.export import INPUT_NAME
from detserve.models.quantize import CalibrationSource, calibration_batches
from detserve.models.tflite_checks import (
    body_diffs,
    detections,
    metrics,
    raw_diff,
    report_markdown,
    round_like_body,
    round_like_outputs,
)
from detserve.models.tflite_graph import cut_float_tail, explicit_splits, whole_graph_split

REPO = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "tflite_runner.py"
PYTHON_ENV = "DETSERVE_TFLITE_PYTHON"  # another interpreter than .venv-tflite/bin/python
DEFAULT_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
FP32_FILE, INT8_FILE, TAIL_FILE = "model_fp32.tflite", "model_int8.tflite", "model_int8_tail.onnx"
WHOLE_FILE = "model_int8_whole_graph.tflite"
CHECKS_FILE, REPORT_FILE = "checks.json", "report.md"
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
             package: ModelPackage, runs: int, convert: Mapping[str, Any],
             body: Body | None = None) -> dict[str, Any]:
    """Run one .tflite on val (through `body`'s float tail if given) and check it."""
    rows = str(4 + package.manifest.num_classes)
    out = inputs.with_name(model.stem + "_out.npy")
    tail = [] if body is None else ["--tail", str(body.tail)]
    keep = [] if body is None else ["--body-out", str(out.with_suffix(".npz"))]
    runner(python, "infer", "--model", str(model), "--inputs", str(inputs), "--out", str(out),
           "--rows", rows, *tail, *keep)
    got = np.load(out)
    bench = runner(python, "bench", "--model", str(model), "--inputs", str(inputs),
                   "--rows", rows, "--runs", str(runs), *tail)
    preds = detections(got, package.manifest, val.letterboxes, val.image_ids)
    serving, classes = package.manifest.postprocess.score_threshold, package.manifest.classes
    outputs = convert["io"]["outputs"]
    facts = {"file": model.name, "bytes": model.stat().st_size, "io": convert["io"],
             "convert_s": convert["convert_s"], "diff_vs_onnxruntime": raw_diff(ref, got, serving),
             "metrics": metrics(val.gt, preds, classes), "bench": bench}  # fmt: skip
    if body is not None:
        facts["float_tail"] = {"file": body.tail.name, "runs_on": "the host, onnxruntime, "
                               "float32", "nodes": body.tail_nodes}  # fmt: skip
        with np.load(out.with_suffix(".npz")) as kept:
            facts["body_outputs"] = body_diffs(body.reference, dict(kept), outputs)
        rounded = body.run_tail(round_like_body(body.reference, outputs))
    elif any(o["quantization"] for o in outputs):
        rounded = round_like_outputs(ref, outputs)
    else:
        return facts
    facts["onnxruntime_with_output_rounding"] = metrics(
        val.gt, detections(rounded, package.manifest, val.letterboxes, val.image_ids), classes)
    return facts


@dataclass(frozen=True)
class Body:
    """The INT8 model's ONNX side: its float tail (written beside the .tflite) and ONNX
    Runtime's outputs of the body graph on val, the reference for the body's outputs."""

    tail: Path
    tail_nodes: int
    reference: dict[str, FloatArray]  # tail input name -> [n, C, H, W]

    def run_tail(self, feeds: Mapping[str, FloatArray]) -> FloatArray:
        session = _session(onnx.load(str(self.tail)))
        n = len(next(iter(feeds.values())))
        return np.concatenate([session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0]
                               for i in range(n)])  # fmt: skip


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def body_reference(body: onnx.ModelProto, x: FloatArray) -> dict[str, FloatArray]:
    """ONNX Runtime's outputs of the body graph, image by image (it is batch 1)."""
    session = _session(body)
    names = [o.name for o in session.get_outputs()]
    outs = [session.run(None, {INPUT_NAME: x[i : i + 1]}) for i in range(len(x))]
    return {name: np.concatenate([o[k] for o in outs]) for k, name in enumerate(names)}


NOTES = (
    "Input layout: the TFLite models take NHWC [1, H, W, 3] (onnx2tf transposes the NCHW "
    "graph); the host transposes the server's [3, H, W] tensor.",
    "FP32 output: [1, 4 + nc, N], the ONNX layout, float32.",
    "INT8 (full integer): int8 input (quantize at the host: x / scale + zero point; with "
    "scale 1/255 and zero point -128 that is pixel - 128, exact) and int8 outputs, the head "
    "convs' logits per level (box distributions [1, H, W, 4 * reg_max] and classes "
    "[1, H, W, nc], NHWC), each with its own scale; the host dequantizes them "
    "((q - zero point) * scale) and runs the float tail (model_int8_tail.onnx) on them, "
    "which gives [1, 4 + nc, N] for the yolov8 decoder.",
    "INT8 whole-graph control (if run): the tail quantized inside the graph, cut only before "
    "its final Concat into boxes [1, 4, N] and scores [1, nc, N] outputs, each with its own "
    "scale, joined at the host.",
)


def run(package_dir: str | Path, out_dir: Path, int8: bool, n: int, data: Path,
        limit: int | None = None, python: str | None = None, runs: int = 100,
        command: str = "", whole_graph: bool = False) -> dict[str, Any]:
    """Export, check and report; writes the .tflite files, the INT8 model's float tail,
    checks.json and report.md. `whole_graph` adds the control: INT8 with the tail in it."""
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
        "variants": {}, "notes": list(NOTES[: (4 if whole_graph else 3) if int8 else 2]),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        inputs, sample = Path(tmp) / "val_inputs.npy", Path(tmp) / "sample_nhwc.npy"
        np.save(inputs, val.tensors)
        np.save(sample, calib_nhwc(CalibrationSource("synthetic", SAMPLE_IMAGES), package))
        fp32_onnx, graph = Path(tmp) / "model_fp32.onnx", explicit_splits(
            onnx.load(str(package.model_path)))
        onnx.save(graph, str(fp32_onnx))
        conv = runner(py, "convert", "--onnx", str(fp32_onnx), "--out", str(out_dir / FP32_FILE),
                      "--sample", str(sample))
        results["versions"] = conv["versions"]
        results["variants"]["fp32"] = _variant(py, out_dir / FP32_FILE, val, ref, inputs,
                                               package, runs, conv)
        if source is not None:
            results["calibration"] = source.describe()
            calib = Path(tmp) / "calib_nhwc.npy"
            np.save(calib, calib_nhwc(source, package))
            body, conv = _convert_int8(py, graph, val, sample, calib, out_dir)
            results["variants"]["int8"] = _variant(py, out_dir / INT8_FILE, val, ref, inputs,
                                                   package, runs, conv, body)
            if whole_graph:
                whole = Path(tmp) / "model_whole.onnx"
                onnx.save(whole_graph_split(graph), str(whole))
                conv = runner(py, "convert", "--onnx", str(whole), "--out",
                              str(out_dir / WHOLE_FILE), "--sample", str(sample),
                              "--calib", str(calib))
                results["variants"]["int8_whole_graph"] = _variant(
                    py, out_dir / WHOLE_FILE, val, ref, inputs, package, runs, conv)
    results["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    (out_dir / CHECKS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / REPORT_FILE).write_text(report_markdown(results))
    return results


def calib_nhwc(source: CalibrationSource, package: ModelPackage) -> FloatArray:
    """The calibration split's first `source.n` scenes, preprocessed, NHWC (onnx2tf's layout)."""
    batches = list(calibration_batches(source, package.manifest))
    return np.ascontiguousarray(np.concatenate(batches).transpose(0, 2, 3, 1))


def _convert_int8(python: Path, graph: onnx.ModelProto, val: ValSet, sample: Path,
                  calib: Path, out_dir: Path) -> tuple[Body, dict[str, Any]]:
    """The body (all but the float tail) to full INT8; the tail written beside it."""
    body, tail = cut_float_tail(graph)
    body_onnx, tail_onnx = sample.with_name("model_body.onnx"), out_dir / TAIL_FILE
    onnx.save(body, str(body_onnx))
    onnx.save(tail, str(tail_onnx))
    conv = runner(python, "convert", "--onnx", str(body_onnx), "--out", str(out_dir / INT8_FILE),
                  "--sample", str(sample), "--calib", str(calib))
    return Body(tail_onnx, len(tail.graph.node), body_reference(body, val.tensors)), conv
