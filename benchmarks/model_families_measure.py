"""One (package, CPU path) measurement of benchmarks/model_families.py, run in a subprocess of
its own so that the peak RSS is that path's own.

Paths: `ort-fp32` (ONNX Runtime, 2 intra-op threads), `ov-fp32` and `ov-int8` (OpenVINO through
detserve's engine: 2 threads, 1 stream, LATENCY hint, f32 inference precision for FP32 so no
CPU falls back to BF16, one compiled model per timed batch size with static shapes).

Time: `engine.infer` + `decode_batch` (the served compute path: host NMS for the YOLOv8 layout,
the graph's own for torchvision) on rendered val scenes, median ms per image after one warm-up
run, over at least MIN_RUNS runs and MIN_S seconds, or at least FEW_RUNS runs once MAX_S have
passed (the slow rows: seconds per run).

Memory (MiB, from /proc/self/status): `rss_loaded` is VmRSS once the engine is made (weights
resident, before any run; freed heap handed back first, glibc malloc_trim); before each batch
size's runs the peak (VmHWM) is reset to the current RSS (`/proc/self/clear_refs` 5), and
`activation_b{N}` = that batch's peak - rss_loaded - the input tensor's bytes: activations,
runtime arenas, outputs and decode. ONNX Runtime keeps its arena between runs, so batch 8's
figure holds what batch 1 left in it (at most ~1/8 more).
`peak_rss` is the process's peak over import, load and all runs.

Check: the ORT run saves its raw batch-1 outputs; each other path compares its own against them
(engines' raw outputs: max abs diff of boxes and of class scores; torchvision graphs: each
detection matched to the nearest one of its label, see `matched_diff`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.decode import decode_batch
from detserve.engines.manifest import Manifest, load_package

MIN_RUNS = 5
MIN_S = 3.0
FEW_RUNS = 3
MAX_S = 12.0
THREADS = 2
PATHS = ("ort-fp32", "ov-fp32", "ov-int8")
OV_PRECISION = {"ov-fp32": "f32", "ov-int8": "int8"}  # engines/openvino_precision.PRECISIONS


class Engine(Protocol):
    @property
    def manifest(self) -> Manifest: ...

    @property
    def kind(self) -> str: ...

    def infer(self, batch: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.generic]]: ...


def status_mib(field: str) -> float:
    """A VmRSS/VmHWM figure of this process. Not ru_maxrss: Linux carries that over exec from
    the forking parent, so every child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def trim() -> None:
    """Hands freed heap pages back to the OS (glibc malloc_trim). Loading a model frees its
    parsed copy; left resident, later activations would reuse those pages unseen by RSS."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> None:
    """VmHWM := VmRSS (Linux >= 4.0), so the next peak read is of what runs after this."""
    trim()
    Path("/proc/self/clear_refs").write_text("5")


def make_engine(path: str, package_dir: Path, batches: Sequence[int]) -> Engine:
    package = load_package(package_dir)
    if path == "ort-fp32":
        from detserve.engines.ort import OrtEngine

        return OrtEngine(package, intra_op_threads=THREADS)
    if path in ("ov-fp32", "ov-int8"):
        from detserve.engines.openvino import OpenVinoEngine

        # A torchvision graph takes one image (infer_fn runs a batch image by image) and its
        # outputs' first axis is detections, not images, which the engine's static-size path
        # would cut to the batch: it runs on the graph's own shapes. Costs given: measuring
        # them at start-up costs one run per size (seconds for the large rows); they only
        # pick the plan 8 -> (8,).
        one = package.manifest.output_format == "torchvision"
        sizes = [] if one else sorted(set(batches))
        return OpenVinoEngine(package, precision=OV_PRECISION[path], num_threads=THREADS,
                              num_streams=1, performance_hint="LATENCY", static_batch_sizes=sizes,
                              plan_costs_ms={n: float(n) for n in sizes})  # fmt: skip
    raise ValueError(f"unknown path {path!r}; one of {list(PATHS)}")


def scenes(size: int, batch: int) -> npt.NDArray[np.float32]:
    """`batch` rendered val scenes at size x size, as the engines take them."""
    from detserve.models.scenes import render_scene, split_seeds

    images = [render_scene(s, size, size).image for s in split_seeds("val", batch)]
    return np.stack([im.transpose(2, 0, 1) for im in images]).astype(np.float32) / 255


def infer_fn(engine: Engine) -> Callable[[npt.NDArray[np.float32]], list[npt.NDArray[Any]]]:
    """Raw outputs of a batch. OpenVINO's engine runs a batch whole, so a one-image torchvision
    graph is run image by image here (ONNX Runtime's engine does that itself)."""
    if engine.manifest.output_format == "torchvision" and engine.kind == "openvino":
        def per_image(x: npt.NDArray[np.float32]) -> list[npt.NDArray[Any]]:
            return [np.asarray(o) for i in range(len(x)) for o in engine.infer(x[i:i + 1])]
        return per_image
    return lambda x: [np.asarray(o) for o in engine.infer(x)]


def _served(infer: Callable[[npt.NDArray[np.float32]], list[npt.NDArray[Any]]],
            x: npt.NDArray[np.float32], m: Manifest, boxes: list[Letterbox],
            params: list[DecodeParams]) -> None:
    decode_batch(infer(x), m, boxes, params)


def _time_batch(run: Callable[[], object]) -> list[float]:
    run()  # warm-up
    times: list[float] = []
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if len(times) >= MIN_RUNS and elapsed >= MIN_S:
            break
        if len(times) >= FEW_RUNS and elapsed >= MAX_S:
            break
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def measure(path: str, package_dir: Path, batches: Sequence[int], save: Path | None,
            reference: Path | None) -> dict[str, Any]:
    """Latency, memory and (against `reference`) the output check of one path."""
    started = time.monotonic()
    engine = make_engine(path, package_dir, batches)
    m = engine.manifest
    trim()
    rss_loaded = status_mib("VmRSS")
    peaks = [status_mib("VmHWM")]
    infer = infer_fn(engine)
    p = m.postprocess
    params = DecodeParams(p.score_threshold, p.iou_threshold, p.max_detections, None)
    out: dict[str, Any] = {"path": path, "package": str(package_dir),
                           "rss_loaded_mib": round(rss_loaded, 1)}  # fmt: skip
    for b in batches:
        x = scenes(m.input_width, b)
        boxes = [Letterbox(1.0, 1.0, 0.0, 0.0, m.input_width, m.input_height)] * b
        if b == batches[0]:
            raw = infer(x[:1])
            if save is not None:
                np.savez(save, *raw)
            if reference is not None:
                out["check"] = compare(raw, _load_outputs(reference), m.output_format)
        reset_peak()
        times = _time_batch(functools.partial(_served, infer, x, m, boxes, [params] * b))
        peaks.append(status_mib("VmHWM"))
        out[f"ms_per_image_b{b}"] = round(float(np.median(times)) * 1e3 / b, 2)
        out[f"runs_b{b}"] = len(times)
        out[f"activation_mib_b{b}"] = round(peaks[-1] - rss_loaded - x.nbytes / 2**20, 1)
    out["peak_rss_mib"] = round(max(peaks), 1)
    out["wall_s"] = round(time.monotonic() - started, 1)
    return out


def _load_outputs(path: Path) -> list[npt.NDArray[Any]]:
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def compare(got: Sequence[npt.NDArray[Any]], want: Sequence[npt.NDArray[Any]],
            output_format: str) -> dict[str, Any]:
    """How far `got` (one image's raw outputs) is from `want` (ONNX Runtime FP32's)."""
    if output_format == "torchvision":
        return {"method": "torchvision: each detection matched to the nearest of its label",
                **matched_diff(want, got)}
    if output_format != "yolov8":
        raise ValueError(f"no output check for format {output_format!r}")
    g, w = np.asarray(got[0], np.float32), np.asarray(want[0], np.float32)
    if g.shape != w.shape:
        raise ValueError(f"output shapes differ: {g.shape} against ORT's {w.shape}")
    return {"method": "yolov8 raw output [B, 4 + classes, anchors]",
            "max_abs_diff_boxes": float(np.abs(g[:, :4] - w[:, :4]).max()),
            "max_abs_diff_scores": float(np.abs(g[:, 4:] - w[:, 4:]).max())}  # fmt: skip


def matched_diff(want: Sequence[npt.NDArray[Any]], got: Sequence[npt.NDArray[Any]],
                 tie: float = 1e-3, box_tol: float = 0.05) -> dict[str, Any]:
    """One image's (boxes, labels, scores) against a reference's, row order aside: each detection
    of `got` against the reference detection of its label nearest to it (max abs box coordinate).
    Near-equal scores leave NMS and top-k open: of two near copies (neighbouring anchors) the
    runtimes may keep different ones, so a detection more than `box_tol` px from every reference
    box is counted as tied when the reference has one of its label within `tie` in score, and
    `max_abs_diff_boxes_untied` leaves the tied ones out. The score-sorted diff compares the two
    sorted score lists, which ties cannot reorder."""
    wb, wl, ws = (np.asarray(a) for a in want[:3])
    gb, gl, gs = (np.asarray(a) for a in got[:3])
    box = score = untied = 0.0
    unmatched = tied = 0
    for b, label, s in zip(gb, gl, gs, strict=True):
        same = np.flatnonzero(wl == label)
        if same.size == 0:
            unmatched += 1
            continue
        dist = np.abs(wb[same] - b).max(axis=1)
        j = same[int(dist.argmin())]
        d = float(dist.min())
        box, score = max(box, d), max(score, abs(float(ws[j] - s)))
        if d > box_tol and np.any(np.abs(ws[same] - s) <= tie):
            tied += 1
        else:
            untied = max(untied, d)
    n = min(len(ws), len(gs))
    sorted_diff = np.abs(np.sort(ws)[::-1][:n] - np.sort(gs)[::-1][:n]).max(initial=0.0)
    return {"detections": [len(wb), len(gb)], "labels_unmatched": unmatched,
            "max_abs_diff_boxes": box, "max_abs_diff_scores": score,
            "max_abs_diff_sorted_scores": float(sorted_diff),
            "tied_off": tied, "max_abs_diff_boxes_untied": untied,
            "tie_margin": tie, "box_tolerance_px": box_tol}  # fmt: skip
