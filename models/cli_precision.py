"""`detserve-model add-nms | quantize | compare-precision`: NMS placement, precision ladder."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from detserve.engines.manifest import ManifestError
from detserve.models.extras import explain


def register(subparsers: Any) -> None:
    from detserve.models.cli_qat import register as register_qat

    _register_add_nms(subparsers)
    _register_quantize(subparsers)
    register_qat(subparsers)  # quantize-qat: INT8 by quantization-aware fine-tuning
    _register_compare(subparsers)


def _register_add_nms(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "add-nms",
        help="append NMS to a yolov8-layout package (end2end outputs)",
        description="Write a new package whose graph ends in NMS with EfficientNMS's four "
        "padded outputs. --target ort uses standard ONNX ops (runs on ONNX Runtime); "
        "--target tensorrt uses the EfficientNMS_TRT plugin (TensorRT only).",
    )
    p.add_argument("package", help="yolov8-format model package directory")
    p.add_argument("--target", required=True, choices=["ort", "tensorrt"])
    p.add_argument("--out", default=None, help="new package dir (default: PACKAGE_nms_TARGET)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="default: the manifest's postprocess.score_threshold")  # fmt: skip
    p.add_argument("--iou-threshold", type=float, default=None,
                   help="default: the manifest's postprocess.iou_threshold")  # fmt: skip
    p.add_argument("--max-detections", type=int, default=None,
                   help="max_output_boxes (default: the manifest's max_detections)")  # fmt: skip
    p.add_argument("--class-agnostic", action="store_true", help="NMS across classes")
    p.set_defaults(func=_add_nms)


def _register_quantize(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="INT8 (ONNX Runtime static PTQ, QDQ, or OpenVINO NNCF IR) or FP16 copy of an "
        "fp32 package",
    )
    p.add_argument("package", help="fp32 model package directory")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--int8", action="store_true", help="static post-training INT8, QDQ")
    kind.add_argument("--fp16", action="store_true", help="FP16 weights (for GPU engines)")
    p.add_argument("--calib", default="synthetic",
                   help="'synthetic' (scene seeds disjoint from train/val/test) or a folder of "
                        "images disjoint from val (default synthetic)")  # fmt: skip
    p.add_argument("--n", type=int, default=200, help="calibration images (100..500 typical)")
    p.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "openvino"],
                   help="onnxruntime: QDQ ONNX (default); openvino: NNCF post-training INT8, "
                        "written as an OpenVINO IR (model.xml + model.bin) for the openvino "
                        "engine")  # fmt: skip
    p.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument(
        "--for",
        dest="target",
        default="cpu",
        choices=["cpu", "tensorrt"],
        help="cpu: uint8 activations (ONNX Runtime CPU); tensorrt: symmetric int8",
    )
    p.add_argument("--float-head", action="store_true",
                   help="also keep the detection head's output convs in float (int8 steps hurt "
                        "box regression most); the decode tail is always float")  # fmt: skip
    p.add_argument("--out", default=None, help="new package dir (default: PACKAGE_int8 / _fp16)")
    p.add_argument(
        "--eval-data",
        default=None,
        help="COCO set (val) to evaluate fp32 and int8 side by side afterwards",
    )
    p.add_argument("--eval-limit", type=int, default=None, help="first N images of --eval-data")
    p.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="flag any class or size losing more AP points than this (default 1)",
    )
    p.set_defaults(func=_quantize)


def _register_compare(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare-precision", help="evaluate two packages on one COCO set and compare row by row"
    )
    p.add_argument("base", help="reference package (usually fp32)")
    p.add_argument("other", help="package to check (int8, fp16, in-graph NMS, ...)")
    p.add_argument("--data", required=True, help="COCO json or folder (val)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--engine", default=None,
                   help="engine kind for both sides (default: each package's own: openvino for "
                        "an OpenVINO IR model.xml, else onnxruntime)")  # fmt: skip
    p.add_argument("--base-engine", default=None, help="engine kind for BASE (overrides --engine)")
    p.add_argument("--other-engine", default=None,
                   help="engine kind for OTHER (overrides --engine)")  # fmt: skip
    p.add_argument("--out", default=None, help="folder for precision.json and precision.md")
    p.set_defaults(func=_compare)


def _default_out(package: str, suffix: str) -> Path:
    src = Path(package)
    if src.name == "manifest.yaml":
        src = src.parent
    return src.parent / f"{src.name}_{suffix}"


def _fail(exc: Exception) -> int:
    print(f"error: {explain(exc)}", file=sys.stderr)
    return 2


def _add_nms(args: argparse.Namespace) -> int:
    from detserve.engines.manifest import load_package
    from detserve.models.nms_graph import add_nms_package, default_config

    try:
        manifest = load_package(args.package).manifest
        cfg = default_config(
            manifest, score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
            max_output_boxes=args.max_detections, class_agnostic=args.class_agnostic or None,
        )  # fmt: skip
        out = Path(args.out) if args.out else _default_out(args.package, f"nms_{args.target}")
        written = add_nms_package(Path(args.package), out, args.target, cfg)
    except (ManifestError, ValueError) as exc:
        return _fail(exc)
    print(json.dumps({"package": str(written), "target": args.target, **cfg.__dict__}))
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from detserve.models.quantize import CalibrationSource, convert_fp16, quantize_int8

    try:
        if args.engine == "openvino":
            return _quantize_openvino(args)
        if args.fp16:
            out = convert_fp16(args.package, args.out or _default_out(args.package, "fp16"))
            print(json.dumps({"package": str(out), "precision": "fp16"}))
            return 0
        source = CalibrationSource(args.calib, args.n)
        result = quantize_int8(
            args.package,
            args.out or _default_out(args.package, "int8"),
            source,
            args.method,
            target=args.target,
            float_head=args.float_head,
        )
        print(json.dumps({"package": str(result.package), "precision": "int8",
                          "float_tail_nodes": result.float_nodes,
                          "dequantize_nodes": result.quantized_nodes}))  # fmt: skip
        if args.eval_data:
            return _report(args.package, result.package, args.eval_data, args.eval_limit,
                           args.margin, ("onnxruntime", "onnxruntime"), result.package)  # fmt: skip
    except (ManifestError, ValueError) as exc:
        return _fail(exc)
    return 0


# ONNX Runtime-only flags, with the defaults that mean "not given".
_ORT_ONLY = (("--fp16", "fp16", False), ("--method", "method", "minmax"),
             ("--for", "target", "cpu"), ("--float-head", "float_head", False))  # fmt: skip


def _quantize_openvino(args: argparse.Namespace) -> int:
    from detserve.models.quantize import CalibrationSource
    from detserve.models.quantize_openvino import quantize_openvino

    given = [flag for flag, attr, unset in _ORT_ONLY if getattr(args, attr) != unset]
    if given:
        raise ValueError(
            f"--engine openvino makes an NNCF INT8 IR (decode tail and predictor convs float); "
            f"{given} apply to --engine onnxruntime only"
        )
    out = args.out or _default_out(args.package, "int8")
    # NNCF draws progress bars on stdout; keep stdout for the one JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        result = quantize_openvino(args.package, out, CalibrationSource(args.calib, args.n))
    print(json.dumps({"package": str(result.package), "precision": "int8", "engine": "openvino",
                      "float_tail_nodes": result.float_nodes,
                      "float_predictor_convs": result.float_predictors,
                      "fake_quantize_ops": result.fake_quantize,
                      "subset_size": result.subset_size}))  # fmt: skip
    if args.eval_data:
        # Both sides on OpenVINO: the report measures the quantization, not an engine change.
        return _report(args.package, result.package, args.eval_data, args.eval_limit,
                       args.margin, ("openvino", "openvino"), result.package)  # fmt: skip
    return 0


def _compare(args: argparse.Namespace) -> int:
    engines = (args.base_engine or args.engine, args.other_engine or args.engine)
    try:
        return _report(args.base, args.other, args.data, args.limit, args.margin, engines,
                       args.out)  # fmt: skip
    except (ManifestError, ValueError, RuntimeError) as exc:  # RuntimeError: engine load
        return _fail(exc)


def _report(base: str | Path, other: str | Path, data: str, limit: int | None, margin: float,
            engines: tuple[str | None, str | None], out: str | Path | None) -> int:  # fmt: skip
    from detserve.models.precision_report import compare_packages, write_comparison

    cmp = compare_packages(base, other, data, limit, margin, engines)
    print(cmp.to_markdown(), end="")
    if out is not None:
        js, md = write_comparison(cmp, out)
        print(f"wrote {js} and {md}", file=sys.stderr)
    return 0
