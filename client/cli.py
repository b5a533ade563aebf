"""`detserve-client`: detect objects in images, stream a video, list models.

    detserve-client detect scene.jpg photos/ 'shots/**/*.png' --concurrency 4 --save out/
    detserve-client detect scene.jpg --classes person car --json
    detserve-client stream camera.mp4 --fps 15
    detserve-client stream --synthetic --frames 60 --fps 15
    detserve-client models

Images may be JPEG/PNG or anything OpenCV reads (grey, RGBA, 16-bit, WebP, BMP, TIFF are
converted here before they are sent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from detserve.client.cli_detect import run_detect
from detserve.client.cli_output import EXIT_CODES_HELP, EXIT_OK, Output, UsageError
from detserve.client.cli_security import add_security_args, security_from_args
from detserve.client.cli_stream import SYNTHETIC_FRAMES, open_frames, run_stream
from detserve.client.client import DetectClient, DetectOptions
from detserve.client.images import PixelFormat
from detserve.client.results import DetectError

DEFAULT_TARGET = "localhost:50051"


def package_version() -> str:
    try:
        return version("detserve")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=DEFAULT_TARGET, help="server host:port (%(default)s)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-call deadline in seconds")
    p.add_argument("--load-balancing", choices=("pick_first", "round_robin"), default=None,
                   help="gRPC balancing over the addresses --target resolves to (round_robin "
                        "with dns:///<headless service>:<port>); default pick_first")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line on stdout, errors included")
    add_security_args(p)


def _add_detect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help='"name" or "name@variant"; empty = default')
    p.add_argument("--score-threshold", type=float, default=None, help="override, in [0, 1]")
    p.add_argument("--iou-threshold", type=float, default=None, help="override, in (0, 1]")
    p.add_argument("--max-detections", type=int, default=None, help="override, >= 1")
    p.add_argument("--classes", nargs="*", default=[], metavar="CLASS",
                   help="keep only these classes: names (as `models` lists them) or ids")


def _subparser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
               help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detserve-client", description=__doc__,
                                     epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    det = _subparser(sub, "detect", "detect objects in image files, folders or glob patterns")
    det.add_argument("images", nargs="+", metavar="IMAGE",
                     help="image files, folders (their images, not recursive) or quoted globs "
                          "('**' recurses)")
    det.add_argument("--concurrency", type=_positive_int, default=1,
                     help="requests in flight at once (%(default)s); output stays in input order")
    det.add_argument("--save", metavar="DIR", default=None,
                     help="write a copy of each image with its boxes and labels drawn into DIR")
    _add_common(det)
    _add_detect_options(det)
    st = _subparser(sub, "stream", "send video frames over DetectStream, then a summary")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("video", nargs="?", help="video file read with OpenCV")
    src.add_argument("--synthetic", action="store_true", help="synthetic moving-object camera")
    st.add_argument("--frames", type=int, default=None,
                    help=f"frames to send (default: the whole video, {SYNTHETIC_FRAMES} synthetic)")
    st.add_argument("--fps", type=float, default=0.0, help="pace frames at this rate; 0 = ASAP")
    st.add_argument("--width", type=int, default=640, help="synthetic frame width")
    st.add_argument("--height", type=int, default=480, help="synthetic frame height")
    st.add_argument("--seed", type=int, default=0, help="synthetic camera seed")
    st.add_argument("--policy", choices=("block", "latest"), default=None,
                    help="stream policy for this stream (default: the server's)")
    _add_common(st)
    _add_detect_options(st)
    models = _subparser(sub, "models", "list the served models")
    _add_common(models)
    return parser


def resolve_classes(client: DetectClient, model: str, values: Sequence[str]) -> tuple[int, ...]:
    """Class ids for --classes: ids as given (the server checks their range), names looked up
    in the model's classes (exact, then case-insensitive); an unknown name is a usage error."""
    if all(v.isdigit() for v in values):
        return tuple(int(v) for v in values)
    info = client.model_info(model)
    lowered = {name.lower(): i for i, name in enumerate(info.classes)}
    ids, unknown = [], []
    for value in values:
        if value.isdigit():
            ids.append(int(value))
        elif value in info.classes:
            ids.append(info.classes.index(value))
        elif value.lower() in lowered:
            ids.append(lowered[value.lower()])
        else:
            unknown.append(value)
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise UsageError(f"--classes: model {info.name} has no class {names}; its classes: "
                         f"{', '.join(info.classes)}")
    return tuple(ids)


def detect_options(client: DetectClient, args: argparse.Namespace,
                   pixel_format: PixelFormat = "BGR8") -> DetectOptions:
    return DetectOptions(
        model=args.model,
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
        max_detections=args.max_detections,
        class_ids=resolve_classes(client, args.model, args.classes),
        pixel_format=pixel_format,
    )


def cmd_detect(client: DetectClient, args: argparse.Namespace, out: Output) -> int:
    return run_detect(client, args, detect_options(client, args), out)


def cmd_stream(client: DetectClient, args: argparse.Namespace, out: Output) -> int:
    frames, fmt = open_frames(args)
    return run_stream(client, args, detect_options(client, args, fmt), frames, fmt, out)


def cmd_models(client: DetectClient, args: argparse.Namespace, out: Output) -> int:
    listing = client.list_models()
    if args.json:
        print(json.dumps({"default_model": listing.default_model,
                          "models": [m.to_json() for m in listing.models]}, indent=2))
        return EXIT_OK
    for m in listing.models:
        mark = "*" if m.is_default else " "
        print(f"{mark} {m.name:<20} v{m.version:<8} {m.input_width}x{m.input_height} "
              f"{m.precision:<5} {m.engine:<12} nms={m.nms or '?'}"
              f"{' multi-label' if m.multi_label else ''} classes={len(m.classes)} "
              f"max_batch={m.batching.max_batch_size}"
              f"{_wait_bound(m.batching.max_queue_wait_ms)}")
    return EXIT_OK


def _wait_bound(ms: float) -> str:
    return f" max_queue_wait={ms:g}ms" if ms else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the return value is the exit code (see EXIT_CODES_HELP)."""
    args = build_parser().parse_args(argv)
    handlers = {"detect": cmd_detect, "stream": cmd_stream, "models": cmd_models}
    out = Output(args.json, args.target)
    try:
        security = security_from_args(args, os.environ)
        with DetectClient(args.target, timeout_s=args.timeout_s, security=security,
                          load_balancing=args.load_balancing) as client:
            return handlers[args.command](client, args, out)
    except (UsageError, DetectError) as err:
        return out.fatal(err)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
