"""`detserve-client detect`: files, folders and globs, `--concurrency` calls at a time, results
printed in input order, `--save DIR` for annotated copies."""

from __future__ import annotations

import argparse
import glob
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from detserve.client.annotate import AnnotatedSaver, read_bgr
from detserve.client.cli_output import EXIT_FAILED, EXIT_OK, Output, UsageError
from detserve.client.client import DetectClient, DetectOptions
from detserve.client.images import CONVERTED_SUFFIXES, IMAGE_SUFFIXES, folder_images
from detserve.client.results import DetectError, DetectResult

INPUT_SUFFIXES = IMAGE_SUFFIXES + CONVERTED_SUFFIXES
GLOB_CHARS = frozenset("*?[")


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Files as given (a missing one fails on its own, later), the images directly inside each
    folder, and the image files each glob pattern matches (`**` recurses), sorted by name."""
    out: list[str] = []
    for item in items:
        if Path(item).is_dir():
            try:
                out.extend(str(p) for p in folder_images(item, INPUT_SUFFIXES))
            except ValueError as err:
                raise UsageError(str(err)) from None
        elif not Path(item).exists() and GLOB_CHARS & set(item):
            matches = [m for m in sorted(glob.glob(item, recursive=True))
                       if Path(m).is_file() and Path(m).suffix.lower() in INPUT_SUFFIXES]
            if not matches:
                raise UsageError(f"no {'/'.join(INPUT_SUFFIXES)} file matches {item!r}")
            out.extend(matches)
        else:
            out.append(item)
    return out


@dataclass(frozen=True)
class Outcome:
    result: DetectResult | None = None
    error: Exception | None = None
    saved: Path | None = None


def detect_one(client: DetectClient, path: str, options: DetectOptions,
               save_to: Path | None, saver: AnnotatedSaver | None) -> Outcome:
    """One image: read, send (converted if the server needs it), and draw its boxes if asked."""
    try:
        data = Path(path).read_bytes()
        result = client.detect(data, options, request_id=path)
        if saver is None or save_to is None:
            return Outcome(result)
        return Outcome(result, saved=saver.save(save_to, read_bgr(data, path), result.detections))
    except FileNotFoundError:
        return Outcome(error=FileNotFoundError("file not found"))  # printed after the path
    except (DetectError, OSError, ValueError) as err:
        return Outcome(error=err)


def _unavailable(err: Exception | None) -> DetectError | None:
    """`err` if it says the server cannot be reached, else None."""
    if isinstance(err, DetectError) and err.code is grpc.StatusCode.UNAVAILABLE:
        return err
    return None


def run_detect(client: DetectClient, args: argparse.Namespace, options: DetectOptions,
               out: Output) -> int:
    paths = expand_inputs(args.images)
    saver = AnnotatedSaver(Path(args.save)) if args.save else None
    # Names are chosen here, in input order, so the files are the same at any concurrency.
    save_paths = [saver.path_for(p) if saver else None for p in paths]
    failures = 0
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures: list[Future[Outcome]] = [
            pool.submit(detect_one, client, path, options, save_to, saver)
            for path, save_to in zip(paths, save_paths, strict=True)
        ]
        try:
            for path, future in zip(paths, futures, strict=True):
                outcome = future.result()
                unavailable = _unavailable(outcome.error)
                if unavailable is not None:
                    raise unavailable  # no server: every other image would say the same
                if outcome.result is None:
                    failures += 1
                    out.failure(path, outcome.error or RuntimeError("no result"))
                else:
                    out.result(outcome.result, path, outcome.saved)
        finally:
            pool.shutdown(cancel_futures=True)
    return EXIT_FAILED if failures else EXIT_OK
