"""`detserve-model eval | import | make-dataset`: evaluation, Ultralytics import, COCO sets."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from detserve.engines.manifest import ManifestError
from detserve.models.coco import CocoError
from detserve.models.extras import explain


def register(subparsers: Any) -> None:
    _register_eval(subparsers)
    _register_import(subparsers)
    _register_make_dataset(subparsers)


def _register_eval(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval", help="COCO AP of a model package on a COCO-format set, via the server's engine")
    p.add_argument("package", help="model package directory (or its manifest.yaml)")
    p.add_argument("--data", required=True, help="COCO json, or a folder with annotations.json")
    p.add_argument("--engine", default=None,
                   help="engine kind (default: the package's own: openvino for an OpenVINO IR "
                        "model.xml, else onnxruntime)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option (value parsed as JSON when it can be); repeatable")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--choose-threshold", action="store_true",
                   help="choose score_threshold (max F1 at IoU 0.5) and write it and the val "
                        "metrics into the package's manifest; refused on the test split")
    p.add_argument("--store-reference", action="store_true",
                   help="write the histograms of detections and max score per image, at the "
                        "package's score threshold, into its manifest (metadata."
                        "drift_reference): the server's distribution-shift reference; "
                        "--choose-threshold stores it too; refused on the test split")
    p.add_argument("--out", default=None, help="folder for eval.json and eval.md")
    p.add_argument("--stem", default="eval", help="file name stem inside --out")
    p.set_defaults(func=_eval)


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--engine-option must be KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _eval(args: argparse.Namespace) -> int:
    from detserve.models.eval_reference import store_reference
    from detserve.models.evaluate import SplitError, apply_threshold, evaluate_package, write_report

    try:
        report = evaluate_package(args.package, args.data, args.engine,
                                  _options(args.engine_option), args.limit,
                                  args.choose_threshold, args.batch_size)
        if args.choose_threshold:
            print(f"wrote {apply_threshold(args.package, report)}", file=sys.stderr)
        elif args.store_reference:
            path = store_reference(args.package, report.reference, report.split)
            print(f"wrote the drift reference into {path}", file=sys.stderr)
    except (ManifestError, CocoError, SplitError, ValueError, RuntimeError) as e:
        print(f"detserve-model eval: error: {explain(e)}", file=sys.stderr)
        return 2
    if args.out:
        js, md = write_report(report, args.out, args.stem)
        print(f"wrote {js} and {md}", file=sys.stderr)
    print(report.to_markdown())
    return 0


def _register_import(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import", help="make a model package from an Ultralytics YOLOv8/YOLO11 ONNX export")
    p.add_argument("onnx", help="the exported .onnx file")
    p.add_argument("--names", default=None,
                   help="'coco' (built-in COCO-80 names) or a file of names (one per line, or "
                        "yaml/json list); default: the 'names' metadata in the ONNX file")
    p.add_argument("--out", default=None, help="package folder (default: next to the .onnx)")
    p.add_argument("--name", default=None, help="model name (default: the file's stem)")
    p.add_argument("--version", default="1", help="the package's model version (default 1; the "
                   "Ultralytics version that exported it is kept in metadata)")
    p.add_argument("--imgsz", type=int, default=None,
                   help="input size when the graph's is dynamic and not in its metadata")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="postprocess.score_threshold (default 0.25, Ultralytics' conf)")
    p.add_argument("--iou-threshold", type=float, default=None,
                   help="postprocess.iou_threshold, NMS IoU (default 0.7, Ultralytics' iou)")
    p.add_argument("--max-detections", type=int, default=None,
                   help="postprocess.max_detections (default 300, Ultralytics' max_det)")
    p.add_argument("--force", action="store_true", help="overwrite an existing package")
    p.set_defaults(func=_import)


_IMPORT_FLAGS = ("names", "out", "name", "version", "imgsz", "score_threshold", "iou_threshold",
                 "max_detections")


def _import_command(args: argparse.Namespace) -> str:
    """The import command as given (flags at their defaults left out), for metadata.import."""
    import shlex

    parts = ["detserve-model", "import", args.onnx]
    for attr in _IMPORT_FLAGS:
        value = getattr(args, attr)
        if value is not None and not (attr == "version" and value == "1"):
            parts += [f"--{attr.replace('_', '-')}", str(value)]
    return shlex.join(parts + (["--force"] if args.force else []))


def _import(args: argparse.Namespace) -> int:
    from detserve.engines.manifest import load_package
    from detserve.models.import_yolo import ImportOptions, YoloImportError, import_onnx

    options = ImportOptions(
        names=args.names, name=args.name, version=args.version, imgsz=args.imgsz,
        score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
        max_detections=args.max_detections,
        command=_import_command(args),
    )  # fmt: skip
    try:
        out = import_onnx(args.onnx, out=args.out, force=args.force, options=options)
        man = load_package(out).manifest
    except (YoloImportError, ManifestError) as e:
        print(f"detserve-model import: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote package {out}: {man.name}@{man.version} ({man.num_classes} classes, input "
          f"{man.input_width}x{man.input_height}, {man.precision}, max batch "
          f"{man.max_batch_size}, score >= {man.postprocess.score_threshold}, NMS IoU "
          f"{man.postprocess.iou_threshold})")
    return 0


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}")
    return int(w), int(h)


def _register_make_dataset(subparsers: Any) -> None:
    p = subparsers.add_parser("make-dataset", help="render a synthetic split as a COCO set")
    p.add_argument("out", help="folder; the set goes to OUT/SPLIT/")
    p.add_argument("--split", choices=("train", "val", "test"), default="val")
    p.add_argument("-n", "--num", type=int, default=200, help="number of scenes")
    p.add_argument("--size", type=_size, action="append", default=None, metavar="WxH",
                   help="scene size, repeatable; scenes cycle through them "
                        "(default: the val/test sizes, 320x320 to 640x480)")
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.set_defaults(func=_make_dataset)


def _make_dataset(args: argparse.Namespace) -> int:
    from detserve.models.scenes import write_coco

    try:
        path = write_coco(args.out, args.split, args.num, args.size, args.format)
    except ValueError as e:
        print(f"detserve-model make-dataset: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} {args.split} scenes: {path}")
    return 0
