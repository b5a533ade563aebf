"""`detserve-client`: detect objects in images, stream a video, list models.

    detserve-client detect scene.jpg other.png --json
    detserve-client stream --synthetic --frames 60 --fps 15
    detserve-client stream camera.mp4
    detserve-client models
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from detserve.client.client import DetectClient, DetectOptions
from detserve.client.images import (
    image_from_array,
    parse_pixel_format,
    synthetic_camera,
    video_frames,
)
from detserve.client.results import DetectError, DetectResult
from detserve.protos import detection_pb2 as pb

DEFAULT_TARGET = "localhost:50051"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=DEFAULT_TARGET, help="server host:port (%(default)s)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-call deadline in seconds")


def _add_detect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help='"name" or "name@variant"; empty = default')
    p.add_argument("--score-threshold", type=float, default=None, help="override, in [0, 1]")
    p.add_argument("--iou-threshold", type=float, default=None, help="override, in (0, 1]")
    p.add_argument("--max-detections", type=int, default=None, help="override, >= 1")
    p.add_argument("--classes", type=int, nargs="*", default=[], help="keep only these ids")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detserve-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    det = sub.add_parser("detect", help="detect objects in image files (JPEG/PNG)")
    det.add_argument("images", nargs="+", help="image files")
    _add_common(det)
    _add_detect_options(det)
    st = sub.add_parser("stream", help="send video frames over DetectStream")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("video", nargs="?", help="video file read with OpenCV")
    src.add_argument("--synthetic", action="store_true", help="synthetic moving-object camera")
    st.add_argument("--frames", type=int, default=100, help="frames to send (%(default)s)")
    st.add_argument("--fps", type=float, default=0.0, help="pace frames at this rate; 0 = ASAP")
    st.add_argument("--width", type=int, default=640, help="synthetic frame width")
    st.add_argument("--height", type=int, default=480, help="synthetic frame height")
    st.add_argument("--seed", type=int, default=0, help="synthetic camera seed")
    st.add_argument("--policy", choices=("block", "latest"), default=None,
                    help="stream policy for this stream (default: the server's)")
    _add_common(st)
    _add_detect_options(st)
    models = sub.add_parser("models", help="list the served models")
    models.add_argument("--json", action="store_true")
    _add_common(models)
    return parser


def _options(args: argparse.Namespace, pixel_format: str = "RGB8") -> DetectOptions:
    return DetectOptions(
        model=args.model,
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
        max_detections=args.max_detections,
        class_ids=tuple(args.classes),
        pixel_format=parse_pixel_format(pixel_format),
    )


def _padding(result: DetectResult) -> str:
    """", run as 8" when the engine ran the batch padded to compiled sizes."""
    ran = result.executed_batch_size
    return f", run as {ran}" if ran > result.batch_size else ""


def format_result(result: DetectResult, name: str) -> str:
    """Human-readable lines for one image or frame."""
    if result.error is not None:
        return f"{name}: {result.error}"
    t = result.timing
    head = (
        f"{name}: {len(result.detections)} objects, {result.latency_ms:.1f} ms round trip "
        f"(server: queue {t.queue_ms:.1f} + pre {t.preprocess_ms:.1f} + infer "
        f"{t.inference_ms:.1f} + post {t.postprocess_ms:.1f} ms; batch {result.batch_size}"
        f"{_padding(result)}; {result.model})"
    )
    lines = [head]
    for d in result.detections:
        box = ", ".join(f"{v:.1f}" for v in d.bbox)
        lines.append(f"  {d.label:<12} {d.score:.3f}  [{box}]")
    return "\n".join(lines)


def _emit(result: DetectResult, name: str, as_json: bool) -> None:
    if as_json:
        out = {"image": name, **result.to_json()}
        print(json.dumps(out), flush=True)
    else:
        print(format_result(result, name), flush=True)


def cmd_detect(args: argparse.Namespace) -> int:
    failures = 0
    with DetectClient(args.target, timeout_s=args.timeout_s) as client:
        for path in args.images:
            try:
                result = client.detect(path, _options(args), request_id=path)
            except (DetectError, FileNotFoundError) as err:
                failures += 1
                print(f"{path}: {err}", file=sys.stderr)
                continue
            _emit(result, path, args.json)
    return 1 if failures else 0


def _paced(frames: Iterator[npt.NDArray[np.uint8]], fps: float, fmt: str) -> Iterator[pb.Image]:
    interval = 1.0 / fps if fps > 0 else 0.0
    start = time.monotonic()
    for i, frame in enumerate(frames):
        if interval:
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield image_from_array(frame, parse_pixel_format(fmt))


def cmd_stream(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise SystemExit(f"--frames must be >= 1, got {args.frames}")
    if args.synthetic:
        frames, fmt = synthetic_camera(args.frames, args.width, args.height, args.seed), "RGB8"
    else:
        frames, fmt = video_frames(args.video, args.frames), "BGR8"  # OpenCV decodes to BGR
    failed = 0
    with DetectClient(args.target, timeout_s=args.timeout_s) as client:
        try:
            replies = client.stream(_paced(frames, args.fps, fmt), _options(args, fmt),
                                    policy=args.policy)
            for result in replies:
                failed += 0 if result.ok else 1
                _emit(result, f"frame {result.frame_id}", args.json)
        except DetectError as err:
            print(f"stream failed: {err}", file=sys.stderr)
            return 2
    return 1 if failed else 0


def cmd_models(args: argparse.Namespace) -> int:
    with DetectClient(args.target, timeout_s=args.timeout_s) as client:
        listing = client.list_models()
    if args.json:
        print(json.dumps({"default_model": listing.default_model,
                          "models": [m.to_json() for m in listing.models]}, indent=2))
        return 0
    for m in listing.models:
        mark = "*" if m.is_default else " "
        print(f"{mark} {m.name:<20} v{m.version:<8} {m.input_width}x{m.input_height} "
              f"{m.precision:<5} {m.engine:<12} nms={m.nms or '?'}"
              f"{' multi-label' if m.multi_label else ''} classes={len(m.classes)} "
              f"max_batch={m.batching.max_batch_size}"
              f"{_wait_bound(m.batching.max_queue_wait_ms)}")
    return 0


def _wait_bound(ms: float) -> str:
    return f" max_queue_wait={ms:g}ms" if ms else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"detect": cmd_detect, "stream": cmd_stream, "models": cmd_models}
    try:
        return handlers[args.command](args)
    except DetectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
