"""The TFLite side of `detserve-model export-tflite`: run by .venv-tflite's Python, not imported.

`bash models/tflite_env.sh` makes that environment (onnx2tf, tensorflow-cpu, ai-edge-litert);
detserve is not installed there, so this file imports only the standard library, numpy, the
TFLite toolchain and onnxruntime (one of onnx2tf's own pins, for the float tail). The main
.venv drives it (models/tflite_export.py) through three commands, each printing one JSON object
on stdout:

    convert --onnx M.onnx --out F.tflite --sample S.npy [--calib C.npy]
                            onnx2tf; with --calib, full INT8 by TFLiteConverter
    infer --model F.tflite --inputs X.npy --out Y.npy [--tail T.onnx --body-out B.npz]
                            raw outputs in the ONNX layout
    bench --model F.tflite --inputs X.npy [--tail T.onnx]    ms per image at batch 1

Inputs are the server's preprocessed tensors, float32 [n, 3, H, W]. The interpreter runs one
image at a time (the graph is converted at batch 1, the phone case); its input is NHWC (onnx2tf
transposes), an INT8 input is quantized here with the model's own scale and zero point, and
INT8 outputs are dequantized here, so `infer` writes what the ONNX graph would: [n, 4 + nc, N]
float32. With `--tail` (the INT8 body) the dequantized outputs go through that float ONNX tail
first (`--body-out` keeps what it was fed); without it split boxes/scores outputs (the
whole-graph control) are joined back in that order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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


# onnx2tf feeds this file (from the working directory, else it downloads its own from GitHub,
# which is not reachable here) through the ONNX and TF graphs to check the conversion op by op.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def convert(onnx_path: Path, out: Path, sample: Path, calib: Path | None) -> dict[str, Any]:
    """onnx2tf at batch 1: its float32 file, or with `calib` a full-integer one made here from
    its SavedModel. `sample`: NHWC images onnx2tf checks its conversion on (resized by it)."""
    import onnx2tf

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(sample, Path(tmp) / ONNX2TF_SAMPLE)
        os.chdir(tmp)
        started = time.perf_counter()
        # stdout carries this command's JSON; onnx2tf's own narration goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=tmp,
                            batch_size=1, non_verbose=True, output_signaturedefs=True)
        if calib is None:
            made = sorted(Path(tmp).glob("*_float32.tflite"))
            if len(made) != 1:
                raise RuntimeError(f"onnx2tf wrote no single *_float32.tflite: "
                                   f"{sorted(p.name for p in Path(tmp).iterdir())}")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(made[0], out)
        else:
            out.write_bytes(full_integer(Path(tmp), calib))
        seconds = time.perf_counter() - started
    return {"file": str(out), "bytes": out.stat().st_size, "convert_s": round(seconds, 1),
            "io": io_details(out), "versions": versions()}  # fmt: skip


def full_integer(saved_model: Path, calib: Path) -> bytes:
    """Full INT8 from onnx2tf's SavedModel: int8 builtin ops only (no TF fallback ops, which
    phone delegates cannot run), int8 weights per channel, int8 activations, int8 input and
    outputs; one calibration pass over `calib` (onnx2tf's own -oiqt makes five variants)."""
    import tensorflow as tf

    data = np.load(calib, mmap_mode="r")

    def representative() -> Any:
        for i in range(len(data)):
            yield [np.asarray(data[i : i + 1], np.float32)]

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = representative
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(sys.stderr):
        model: bytes = converter.convert()
    return model


def versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ("onnx2tf", "tensorflow", "tf-keras", "ai-edge-litert", "onnx", "numpy")
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


def dequantize(value: npt.NDArray[Any], detail: dict[str, Any]) -> FloatArray:
    """An output tensor as float32: (q - zero point) * scale when it is quantized."""
    scale, zero = detail["quantization"]
    v = value.astype(np.float32)
    if scale:
        v = (v - np.float32(zero)) * np.float32(scale)
    return v


def from_outputs(raw: Sequence[npt.NDArray[Any]], details: Sequence[dict[str, Any]],
                 rows: int) -> FloatArray:
    """The interpreter's outputs -> one float32 [1, rows, N] tensor in the ONNX layout:
    dequantized, channels-first, and a split (boxes 4, scores rows - 4) joined back."""
    parts = []
    for value, detail in zip(raw, details, strict=True):
        v = dequantize(value, detail)
        if v.ndim == 3 and v.shape[1] not in (4, rows - 4, rows):
            v = v.transpose(0, 2, 1)  # [1, N, C] -> [1, C, N]
        parts.append(v)
    parts.sort(key=lambda p: 0 if p.shape[1] == 4 else 1)  # boxes first, as in output0
    joined = np.concatenate(parts, axis=1)
    if joined.shape[1] != rows:
        shapes = [list(p.shape) for p in parts]
        raise ValueError(f"outputs {shapes} do not make [1, {rows}, N]")
    return joined


class FloatTail:
    """The float tail (an ONNX graph: the head convs' outputs -> output0) on ONNX Runtime,
    1 thread, fed the body model's dequantized outputs. TFLite names them output_0.. in its
    own order and onnx2tf makes them NHWC, so they are matched to the tail's NCHW inputs by
    shape; a shape that two of them could have is refused rather than guessed."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, tuple(int(d) for d in i.shape))
                       for i in self.session.get_inputs()]  # fmt: skip
        layouts = [s for _, s in self.inputs] + [_nhwc(s) for _, s in self.inputs
                                                 if _nhwc(s) != s]  # fmt: skip
        if len(set(layouts)) != len(layouts):
            raise ValueError(f"tail inputs {self.inputs} cannot be told apart by shape")

    def feeds(self, raw: Sequence[npt.NDArray[Any]],
              details: Sequence[dict[str, Any]]) -> dict[str, FloatArray]:
        """The body's outputs, dequantized and channels-first, by tail input name."""
        got = [dequantize(v, d) for v, d in zip(raw, details, strict=True)]
        feeds: dict[str, FloatArray] = {}
        for name, shape in self.inputs:
            for v in got:
                if v.shape == shape:
                    feeds[name] = v
                elif v.shape == _nhwc(shape):
                    feeds[name] = np.ascontiguousarray(v.transpose(0, 3, 1, 2))
            if name not in feeds:
                raise ValueError(f"no output of shape {list(shape)} (or NHWC) for tail input "
                                 f"{name!r}; outputs {[list(v.shape) for v in got]}")
        return feeds

    def run(self, feeds: dict[str, FloatArray]) -> FloatArray:
        out: FloatArray = self.session.run(None, feeds)[0]
        return out


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else shape


def run_one(it: Any, x: FloatArray, rows: int, tail: FloatTail | None = None,
            keep: dict[str, list[FloatArray]] | None = None) -> FloatArray:
    """One image through the interpreter (and `tail`), as [1, rows, N]; with `keep`, the
    body's dequantized outputs are appended there by tail input name."""
    (inp,) = it.get_input_details()
    outs = it.get_output_details()
    it.set_tensor(inp["index"], to_input(x, inp))
    it.invoke()
    raw = [it.get_tensor(d["index"]) for d in outs]
    if tail is None:
        return from_outputs(raw, outs, rows)
    feeds = tail.feeds(raw, outs)
    if keep is not None:
        for name, v in feeds.items():
            keep.setdefault(name, []).append(v[0])
    return tail.run(feeds)


def infer(model: Path, inputs: Path, out: Path, rows: int, threads: int,
          tail: Path | None = None, body_out: Path | None = None) -> dict[str, Any]:
    x = np.load(inputs, mmap_mode="r")
    it = interpreter(model, threads)
    float_tail = None if tail is None else FloatTail(tail)
    keep: dict[str, list[FloatArray]] = {}
    got = np.stack([run_one(it, np.asarray(x[i : i + 1]), rows, float_tail, keep)[0]
                    for i in range(len(x))])  # fmt: skip
    np.save(out, got)
    if body_out is not None:
        stacked: dict[str, Any] = {name: np.stack(v) for name, v in keep.items()}
        np.savez(body_out, **stacked)
    return {"file": str(out), "shape": list(got.shape)}


def bench(model: Path, inputs: Path, rows: int, threads: int, runs: int,
          tail: Path | None = None) -> dict[str, Any]:
    """Median and p90 ms of one image (set, invoke, read, dequantize and the float tail if
    any), after 5 warm-ups; with a tail, also the tail's own median (dequantized feeds in,
    [1, rows, N] out)."""
    x = np.load(inputs, mmap_mode="r")
    it = interpreter(model, threads)
    float_tail = None if tail is None else FloatTail(tail)
    keep: dict[str, list[FloatArray]] = {}
    times, tail_times = [], []
    for i in range(runs + 5):
        one = np.asarray(x[i % len(x) : i % len(x) + 1])
        started = time.perf_counter()
        run_one(it, one, rows, float_tail, keep)
        times.append((time.perf_counter() - started) * 1e3)
        if float_tail is not None:
            feeds = {name: v.pop()[None] for name, v in keep.items()}
            started = time.perf_counter()
            float_tail.run(feeds)
            tail_times.append((time.perf_counter() - started) * 1e3)
    facts: dict[str, Any] = {"runs": runs, "threads": threads, "batch": 1,
                             "ms_median": round(statistics.median(times[5:]), 2),
                             "ms_p90": round(float(np.percentile(times[5:], 90)), 2)}
    if tail_times:
        facts["tail_ms_median"] = round(statistics.median(tail_times[5:]), 2)
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tflite_runner", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--onnx", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--sample", type=Path, required=True, help="NHWC float32 images")
    c.add_argument("--calib", type=Path, help="NHWC float32 calibration images")
    for name in ("infer", "bench"):
        s = sub.add_parser(name)
        s.add_argument("--model", type=Path, required=True)
        s.add_argument("--inputs", type=Path, required=True)
        s.add_argument("--rows", type=int, required=True, help="4 + number of classes")
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--tail", type=Path, help="an ONNX float tail to run on the outputs")
        if name == "infer":
            s.add_argument("--out", type=Path, required=True)
            s.add_argument("--body-out", type=Path, help=".npz of the outputs the tail got")
        else:
            s.add_argument("--runs", type=int, default=100)
    a = p.parse_args(argv)
    if a.cmd == "convert":
        facts = convert(a.onnx.resolve(), a.out.resolve(), a.sample.resolve(),
                        None if a.calib is None else a.calib.resolve())
    elif a.cmd == "infer":
        facts = infer(a.model, a.inputs, a.out, a.rows, a.threads, a.tail, a.body_out)
    else:
        facts = bench(a.model, a.inputs, a.rows, a.threads, a.runs, a.tail)
    sys.stdout.write(json.dumps(facts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
