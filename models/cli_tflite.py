"""`detserve-model export-tflite`: a yolov8 package to TFLite (FP32, and full INT8 with --int8),
checked against ONNX Runtime on val. The converter and interpreter run in .venv-tflite
(`bash models/tflite_env.sh`); without it the command says so in one line."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from detserve.models.quantize import CALIB_MAX

DEFAULT_VAL = Path("data/sets/val")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export-tflite",
        help="export a yolov8 package to TFLite (FP32, full INT8) and check it on val",
        description="Convert the package's ONNX graph with onnx2tf (in .venv-tflite, made by "
        "models/tflite_env.sh) to model_fp32.tflite and, with --int8, a full-integer "
        "model_int8.tflite (the graph up to the head's last convs) calibrated on --n synthetic "
        "'calib' scenes, with its decode tail in float beside it (model_int8_tail.onnx, run on "
        "the host); run them on the "
        "ai-edge-litert interpreter against ONNX Runtime on the same preprocessed val tensors "
        "(raw-output diffs, mAP through detserve's decoder and NMS, ms/img at batch 1, "
        "1 thread) and write checks.json and report.md.",
    )
    p.add_argument("package", type=Path, help="an fp32 yolov8 model package")
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--int8", action="store_true", help="also the full-INT8 model")
    p.add_argument("--n", type=int, default=200,
                   help=f"calibration scenes of the 'calib' split (1..{CALIB_MAX}; with --int8)")
    p.add_argument("--whole-graph-control", action="store_true",
                   help="with --int8, also the control model_int8_whole_graph.tflite: the "
                   "decode tail quantized inside the graph")
    p.add_argument("--data", type=Path, default=DEFAULT_VAL, help="COCO val set for the checks")
    p.add_argument("--limit", type=int, help="only the first LIMIT val images")
    p.add_argument("--runs", type=int, default=100, help="timed runs per model")
    p.add_argument("--python", help="the TFLite environment's Python (default "
                   ".venv-tflite/bin/python, or $DETSERVE_TFLITE_PYTHON)")
    p.set_defaults(func=_export)


def _fail(message: str) -> int:
    print(f"detserve-model export-tflite: error: {message}", file=sys.stderr)
    return 2


def _command(args: argparse.Namespace) -> str:
    """The command line this run amounts to (recorded in checks.json)."""
    words = ["detserve-model", "export-tflite", str(args.package), "--out", str(args.out)]
    if args.int8:
        words += ["--int8", "--n", str(args.n)]
        if args.whole_graph_control:
            words.append("--whole-graph-control")
    words += ["--data", str(args.data)]
    if args.limit is not None:
        words += ["--limit", str(args.limit)]
    return shlex.join([*words, "--runs", str(args.runs)])


def _export(args: argparse.Namespace) -> int:
    from detserve.models.tflite_export import EnvMissingError, find_python, run

    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be >= 1, got {args.limit}")
    if args.runs < 1:
        return _fail(f"--runs must be >= 1, got {args.runs}")
    if args.whole_graph_control and not args.int8:
        return _fail("--whole-graph-control needs --int8")
    if args.int8 and not 1 <= args.n <= CALIB_MAX:
        return _fail(f"calibration count --n must be in [1, {CALIB_MAX}], got {args.n}")
    try:
        find_python(args.python)
        command = _command(args)
        results = run(args.package, args.out, args.int8, args.n, args.data, args.limit,
                      args.python, args.runs, command, args.whole_graph_control)
    except (EnvMissingError, ValueError, FileNotFoundError, RuntimeError) as exc:
        return _fail(str(exc))
    for name, v in results["variants"].items():
        m, d = v["metrics"], v["diff_vs_onnxruntime"]
        tail = v["bench"].get("tail_ms_median")
        of_it = "" if tail is None else f" ({tail} of it the float tail)"
        print(f"{name}: {args.out / v['file']} {v['bytes']} bytes, {v['bench']['ms_median']} "
              f"ms/img{of_it}, mAP@0.5 {m['mAP@0.5']}, mAP@0.5:0.95 {m['mAP@0.5:0.95']}, "
              f"max abs diff boxes {d['max_abs_diff_boxes_px']:.3g} px, "
              f"scores {d['max_abs_diff_scores']:.3g}")
    print(f"wrote {args.out / 'checks.json'} and {args.out / 'report.md'}")
    return 0
