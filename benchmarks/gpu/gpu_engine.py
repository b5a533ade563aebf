"""Device benchmark, engine side: model packages to measure, raw TorchEngine sweeps, GPU vs host
NMS. Every loop is bounded by a wall-clock budget so the whole run fits the device's limit."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.decode import decode_batch
from detserve.engines.manifest import Manifest, ModelPackage, Postprocess, load_package
from detserve.engines.manifest import write_manifest as write_package_manifest
from detserve.engines.torch_cuda import TorchEngine
from detserve.engines.torch_nms import NmsSettings, nms_backend, yolov8_end2end
from detserve.models.detector import DetectorConfig, build_detector, load_checkpoint
from detserve.models.detector import save_checkpoint as save_detector

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchModel:
    """A package to measure and what its weights are (trained, or random for speed only)."""

    label: str
    package: ModelPackage
    weights: str  # "trained" or "random"
    config: dict[str, Any]

    @property
    def input_size(self) -> int:
        return int(self.package.manifest.input_width)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "path": str(self.package.root), "weights": self.weights,
                "detector_config": self.config, "input": self.input_size,
                "classes": len(self.package.manifest.classes)}


def _calibrate_random(model: torch.nn.Module, size: int) -> None:
    """Untrained nets give near-constant outputs; BatchNorm statistics from one train-mode pass
    restore unit-variance activations (speed does not depend on weights, NMS load does)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, size, size))
    model.eval()


def write_random_package(root: Path, base: Manifest, cfg: DetectorConfig, size: int,
                         label: str) -> ModelPackage:
    """A package whose network is `cfg` with seeded random weights, rebuilt from its checkpoint
    (the torch-cuda engine needs no ONNX file, so `model_file` is the checkpoint itself)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_detector(cfg)
    _calibrate_random(model, min(size, 320))
    save_detector(model, cfg, root / "model.pt")
    manifest = dataclasses.replace(
        base, name=label, version="random", model_file="model.pt", input_width=size,
        input_height=size, max_batch_size=max(64, base.max_batch_size),
        metadata={"torch_checkpoint": "model.pt", "weights": "random (speed only)"})
    write_package_manifest(manifest, root)
    return load_package(root)


def bench_copy(package: ModelPackage, root: Path) -> ModelPackage:
    """The package's checkpoint + manifest with input.max_batch_size >= 64: the torch engine has
    no fixed batch limit, but the server refuses batching above the manifest's limit."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    ckpt = str(package.manifest.metadata["torch_checkpoint"])
    shutil.copy2(package.root / ckpt, root / "model.pt")
    meta = dict(package.manifest.metadata)
    meta.update(torch_checkpoint="model.pt", bench_copy_of=str(package.root))
    manifest = dataclasses.replace(package.manifest, model_file="model.pt", metadata=meta,
                                   max_batch_size=max(64, package.manifest.max_batch_size))
    write_package_manifest(manifest, root)
    return load_package(root)


def find_models(repo: Path, work: Path, default_size: int, large_size: int,
                log: Log) -> list[BenchModel]:
    """The default model (trained package if present) and the x2 width/depth variant."""
    from detserve.models.scenes import CLASSES

    pkg_dir = repo / "models" / "packages" / f"shapes_{default_size}"
    models: list[BenchModel] = []
    try:
        package = load_package(pkg_dir)
        ckpt = package.manifest.metadata.get("torch_checkpoint")
        _, cfg = load_checkpoint(package.root / str(ckpt))
        if package.manifest.input_width != default_size:
            raise ValueError(f"{pkg_dir} has input {package.manifest.input_width}")
        package = bench_copy(package, work / "default-trained")
        models.append(BenchModel("default", package, "trained", dataclasses.asdict(cfg)))
    except Exception as exc:  # a missing/unfinished trained package must not end the run
        log(f"no trained package at {pkg_dir} ({exc}); using random weights for 'default'")
        cfg = DetectorConfig(num_classes=len(CLASSES))
        base = Manifest(name="shapes", version="1", classes=tuple(CLASSES),
                        input_width=default_size, input_height=default_size)
        package = write_random_package(work / "default", base, cfg, default_size, "shapes")
        models.append(BenchModel("default", package, "random", dataclasses.asdict(cfg)))
    base_cfg = DetectorConfig(**models[0].config)
    big = dataclasses.replace(base_cfg, width_mult=base_cfg.width_mult * 2,
                              depth_mult=base_cfg.depth_mult * 2)
    package = write_random_package(work / "large", models[0].package.manifest, big, large_size,
                                   "shapes-large")
    models.append(BenchModel("large", package, "random", dataclasses.asdict(big)))
    return models


def _timed(fn: Callable[[], object], budget_s: float, min_iters: int, max_iters: int,
           sync: Callable[[], None]) -> tuple[int, float]:
    """(iterations, seconds) of `fn` run back to back for about `budget_s`."""
    sync()
    start = time.perf_counter()
    n = 0
    while n < max_iters and (n < min_iters or time.perf_counter() - start < budget_s):
        fn()
        n += 1
    sync()
    return n, time.perf_counter() - start


def _sync_for(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def engine_sweep(model: BenchModel, device: str, precision: str, graphs: bool,
                 batch_sizes: Sequence[int], per_size_s: float, deadline: float,
                 log: Log) -> list[dict[str, Any]]:
    """Raw `TorchEngine.infer` (H2D copy, network, GPU NMS, D2H) at each batch size."""
    if time.monotonic() > deadline:
        log(f"engine {model.label} {precision} graphs={graphs}: no budget left, skipped")
        return []
    t0 = time.perf_counter()
    engine = TorchEngine(model.package, device=device, precision=precision, nms="gpu",
                         batch_sizes=batch_sizes, cuda_graphs=graphs)
    setup_s = time.perf_counter() - t0
    if graphs and not engine.cuda_graphs and device.startswith("cuda"):
        log(f"engine {model.label} {precision}: CUDA graphs FAILED, eager: {engine.graph_error}")
    graphs = engine.cuda_graphs or (not device.startswith("cuda") and graphs)
    size = model.input_size
    rng = np.random.default_rng(0)
    rows = []
    sync = _sync_for(device)
    for bs in batch_sizes:
        if time.monotonic() > deadline:
            log(f"engine {model.label} {precision}: budget spent before batch {bs}")
            break
        batch = rng.random((bs, 3, size, size), dtype=np.float32)
        engine.infer(batch)  # first call at this size: allocator and cuDNN warm-up
        def step(b: np.ndarray[Any, Any] = batch) -> object:
            return engine.infer(b)

        n, secs = _timed(step, per_size_s, 2, 10_000, sync)
        # The same work without the host side (numpy -> pinned -> H2D, D2H): the GPU's share.
        def resident(s: int = bs) -> object:
            return engine.run_resident(s)

        d_n, d_secs = _timed(resident, per_size_s / 2, 2, 10_000, sync)
        rows.append({"model": model.label, "weights": model.weights, "input": size,
                     "precision": precision, "cuda_graphs": graphs, "nms": "gpu",
                     "batch": bs, "iters": n, "ms_per_batch": 1000 * secs / n,
                     "img_per_s": bs * n / secs, "device_ms_per_batch": 1000 * d_secs / d_n,
                     "device_img_per_s": bs * d_n / d_secs, "setup_s": setup_s})
        r = rows[-1]
        log(f"engine {model.label}@{size} {precision} graphs={graphs} b{bs}: "
            f"{r['ms_per_batch']:.3f} ms/batch, {r['img_per_s']:.0f} img/s (device only "
            f"{r['device_ms_per_batch']:.3f} ms, {r['device_img_per_s']:.0f} img/s)")
    engine.close()
    return rows


def synthetic_predictions(batch: int, size: int, num_classes: int,
                          seed: int = 0) -> torch.Tensor:
    """Raw yolov8 output `[B, 4+nc, N]` shaped like a real one: each box near its anchor,
    8..96 px, neighbours overlapping; uniform scores so every anchor is a candidate."""
    from detserve.models.detector import make_anchors

    g = torch.Generator().manual_seed(seed)
    shapes = [(size // s, size // s) for s in (8, 16, 32)]
    points, strides = make_anchors(shapes)
    n = points.shape[0]
    out = torch.empty(batch, 4 + num_classes, n)
    jitter = (torch.rand(batch, 2, n, generator=g) - 0.5) * strides.t()
    out[:, :2] = points.t()[None] + jitter
    out[:, 2:4] = 8 + 88 * torch.rand(batch, 2, n, generator=g)
    out[:, 4:] = torch.rand(batch, num_classes, n, generator=g)
    return out


def nms_compare(manifest: Manifest, device: str, batch_sizes: Sequence[int],
                score_threshold: float, budget_s: float, deadline: float,
                log: Log) -> list[dict[str, Any]]:
    """GPU NMS (final rows to host) vs host NMS (raw output to host + numpy decode) on the same
    predictions, with every anchor a candidate (pre-NMS top-k = N)."""
    size = manifest.input_width
    rows: list[dict[str, Any]] = []
    sync = _sync_for(device)
    for bs in batch_sizes:
        if time.monotonic() > deadline:
            log(f"nms: budget spent before batch {bs}")
            break
        preds = synthetic_predictions(bs, size, manifest.num_classes).to(device)
        n_anchors = int(preds.shape[2])
        post = Postprocess(score_threshold, manifest.postprocess.iou_threshold,
                           manifest.postprocess.max_detections, n_anchors)
        man = dataclasses.replace(manifest, postprocess=post)
        settings = NmsSettings(score_threshold, post.iou_threshold, post.max_detections,
                               n_anchors)
        cand = float((preds[:, 4:].max(1).values >= score_threshold).sum()) / bs

        params = [DecodeParams.from_manifest(man)] * bs
        boxes = [Letterbox(1.0, 1.0, 0.0, 0.0, size, size)] * bs

        def gpu(p: torch.Tensor = preds, s: NmsSettings = settings) -> list[torch.Tensor]:
            return [t.cpu() for t in yolov8_end2end(p, s).as_tuple()]

        def host(p: torch.Tensor = preds, m: Manifest = man, lb: list[Letterbox] = boxes,
                 dp: list[DecodeParams] = params) -> object:
            return decode_batch([p.cpu().numpy()], m, lb, dp)

        gpu()
        g_n, g_s = _timed(gpu, budget_s / 4, 2, 200, sync)
        kept = int(gpu()[0].sum()) / bs
        row: dict[str, Any] = {
            "batch": bs, "anchors": n_anchors, "candidates_per_image": cand,
            "kept_per_image": kept, "gpu_ms": 1000 * g_s / g_n, "gpu_iters": g_n,
            "host_ms": None, "host_iters": 0, "gpu_backend": nms_backend(), "device": device}
        # Host NMS at thousands of candidates costs ~0.5 s per image: skip sizes that would
        # overrun the budget instead of stalling the whole run.
        per_image_s = rows[-1]["host_ms"] / 1000 / rows[-1]["batch"] if rows and rows[-1][
            "host_ms"] else 0.0
        if per_image_s * bs <= min(budget_s, deadline - time.monotonic()):
            h_n, h_s = _timed(host, budget_s, 1, 50, sync)
            row.update(host_ms=1000 * h_s / h_n, host_iters=h_n)
        rows.append(row)
        host_txt = "skipped (budget)" if row["host_ms"] is None else f"{row['host_ms']:.2f} ms"
        log(f"nms b{bs}: {cand:.0f} candidates/img, {kept:.0f} kept/img, "
            f"gpu ({row['gpu_backend']}) {row['gpu_ms']:.2f} ms, host {host_txt}")
    return rows
