"""The TFLite side of `detserve-model export-tflite`: run by .venv-tflite's Python, not imported.

`bash models/tflite_env.sh` makes that environment (onnx2tf, tensorflow-cpu, ai-edge-litert);
detserve is not installed there, so this file imports only the standard library, numpy and the
TFLite toolchain. The main .venv drives it (models/tflite_export.py) through three commands, each
printing one JSON object on stdout:

    convert --onnx M.onnx --out F.tflite [--calib C.npy]   onnx2tf; with --calib, full INT8
    infer --model F.tflite --inputs X.npy --out Y.npy      raw outputs in the ONNX layout
    bench --model F.tflite --inputs X.npy                  ms per image at batch 1

Inputs are the server's preprocessed tensors, float32 [n, 3, H, W]. The interpreter runs one
image at a time (the graph is converted at batch 1, the phone case); its input is NHWC (onnx2tf
transposes), an INT8 input is quantized here with the model's own scale and zero point, and
INT8 outputs are dequantized here, so `infer` writes what the ONNX graph would: [n, 4 + nc, N]
float32 (split boxes/scores outputs are joined back in that order).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

INPUT_NAME = "images"  # detserve.models.export.INPUT_NAME (not importable here)
FloatArray = npt.NDArray[np.float32]


def convert(onnx_path: Path, out: Path, calib: Path | None) -> dict[str, Any]:
    """onnx2tf at batch 1; the float32 file, or with `calib` the full-integer one."""
    import onnx2tf

    with tempfile.TemporaryDirectory() as tmp:
        quant: dict[str, Any] = {}
        if calib is not None:
            zeros, ones = np.zeros((1, 1, 1, 3), np.float32), np.ones((1, 1, 1, 3), np.float32)
            # The calibration tensors are already the model's input (scaled to [0, 1]): no
            # mean/std of onnx2tf's own on top.
            quant = {"output_integer_quantized_tflite": True, "quant_type": "per-channel",
                     "custom_input_op_name_np_data_path": [[INPUT_NAME, str(calib), zeros, ones]],
                     "input_quant_dtype": "int8", "output_quant_dtype": "int8"}  # fmt: skip
        started = time.perf_counter()
        # stdout carries this command's JSON; onnx2tf's own narration goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=tmp,
                            batch_size=1, non_verbose=True, **quant)
        seconds = time.perf_counter() - started
        suffix = "full_integer_quant" if calib is not None else "float32"
        made = sorted(Path(tmp).glob(f"*_{suffix}.tflite"))
        if len(made) != 1:
            listing = sorted(p.name for p in Path(tmp).iterdir())
            raise RuntimeError(f"onnx2tf wrote no single *_{suffix}.tflite: {listing}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made[0], out)
    return {"file": str(out), "bytes": out.stat().st_size, "convert_s": round(seconds, 1),
            "io": io_details(out), "versions": versions()}  # fmt: skip


def versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ("onnx2tf", "tensorflow-cpu", "tf-keras", "ai-edge-litert", "onnx", "numpy")
    return {name: md.version(name) for name in names}


def interpreter(model: Path, threads: int = 1) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model), num_threads=threads)
    it.allocate_tensors()
    return it


def _tensor_facts(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero = detail["quantization"]
    return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "quantization": None if scale == 0 else {"scale": float(scale),
                                                     "zero_point": int(zero)}}  # fmt: skip


def io_details(model: Path) -> dict[str, Any]:
    it = interpreter(model)
    return {"inputs": [_tensor_facts(d) for d in it.get_input_details()],
            "outputs": [_tensor_facts(d) for d in it.get_output_details()]}  # fmt: skip


def to_input(x: FloatArray, detail: dict[str, Any]) -> npt.NDArray[Any]:
    """One preprocessed [1, 3, H, W] image as the interpreter's input tensor (layout, dtype)."""
    shape = tuple(int(d) for d in detail["shape"])
    if shape != x.shape:
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC, onnx2tf's input layout
    if x.shape != shape:
        raise ValueError(f"input {x.shape} does not fit the model's input {shape}")
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype == np.float32:
        return np.ascontiguousarray(x, np.float32)
    info = np.iinfo(dtype)
    q: npt.NDArray[Any] = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
    return q


def from_outputs(raw: Sequence[npt.NDArray[Any]], details: Sequence[dict[str, Any]],
                 rows: int) -> FloatArray:
    """The interpreter's outputs -> one float32 [1, rows, N] tensor in the ONNX layout:
    dequantized, channels-first, and a split (boxes 4, scores rows - 4) joined back."""
    parts = []
    for value, detail in zip(raw, details, strict=True):
        scale, zero = detail["quantization"]
        v = value.astype(np.float32)
        if scale:
            v = (v - np.float32(zero)) * np.float32(scale)
        if v.ndim == 3 and v.shape[1] not in (4, rows - 4, rows):
            v = v.transpose(0, 2, 1)  # [1, N, C] -> [1, C, N]
        parts.append(v)
    parts.sort(key=lambda p: 0 if p.shape[1] == 4 else 1)  # boxes first, as in output0
    joined = np.concatenate(parts, axis=1)
    if joined.shape[1] != rows:
        shapes = [list(p.shape) for p in parts]
        raise ValueError(f"outputs {shapes} do not make [1, {rows}, N]")
    return joined


def run_one(it: Any, x: FloatArray, rows: int) -> FloatArray:
    (inp,) = it.get_input_details()
    outs = it.get_output_details()
    it.set_tensor(inp["index"], to_input(x, inp))
    it.invoke()
    return from_outputs([it.get_tensor(d["index"]) for d in outs], outs, rows)


def infer(model: Path, inputs: Path, out: Path, rows: int, threads: int) -> dict[str, Any]:
    x = np.load(inputs, mmap_mode="r")
    it = interpreter(model, threads)
    got = np.stack([run_one(it, np.asarray(x[i : i + 1]), rows)[0] for i in range(len(x))])
    np.save(out, got)
    return {"file": str(out), "shape": list(got.shape)}


def bench(model: Path, inputs: Path, rows: int, threads: int, runs: int) -> dict[str, Any]:
    """Median and p90 ms of one image (set, invoke, read and dequantize), after 5 warm-ups."""
    x = np.load(inputs, mmap_mode="r")
    it = interpreter(model, threads)
    times = []
    for i in range(runs + 5):
        one = np.asarray(x[i % len(x) : i % len(x) + 1])
        started = time.perf_counter()
        run_one(it, one, rows)
        times.append((time.perf_counter() - started) * 1e3)
    times = times[5:]
    return {"runs": runs, "threads": threads, "batch": 1,
            "ms_median": round(statistics.median(times), 2),
            "ms_p90": round(float(np.percentile(times, 90)), 2)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tflite_runner", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--onnx", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--calib", type=Path)
    for name in ("infer", "bench"):
        s = sub.add_parser(name)
        s.add_argument("--model", type=Path, required=True)
        s.add_argument("--inputs", type=Path, required=True)
        s.add_argument("--rows", type=int, required=True, help="4 + number of classes")
        s.add_argument("--threads", type=int, default=1)
        if name == "infer":
            s.add_argument("--out", type=Path, required=True)
        else:
            s.add_argument("--runs", type=int, default=100)
    a = p.parse_args(argv)
    if a.cmd == "convert":
        facts = convert(a.onnx, a.out, a.calib)
    elif a.cmd == "infer":
        facts = infer(a.model, a.inputs, a.out, a.rows, a.threads)
    else:
        facts = bench(a.model, a.inputs, a.rows, a.threads, a.runs)
    sys.stdout.write(json.dumps(facts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
