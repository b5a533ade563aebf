"""`detserve-model report`: the ship report of a package, one self-contained HTML page.

The package is evaluated on the val set given (through the server's engine and decoder, as
`detserve-model eval`), its failures at the served threshold are mined and drawn, and the
benchmark results given are read; then every checklist item gets ✅ or ❌ with its evidence
(models/ship_evidence). A test split is refused: the report looks at the failures one by one,
which is exactly what must never happen on test.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detserve.engines.detections import Detections
from detserve.engines.manifest import Manifest, ModelPackage, default_engine_kind, load_package
from detserve.models.coco import CocoSet, load_coco
from detserve.models.evaluate import SplitError, choose_threshold, dataset_split, predict_set
from detserve.models.evaluate_metrics import CocoMetrics, coco_metrics
from detserve.models.ship_evidence import (
    Check,
    check_gallery,
    check_map,
    check_memory,
    check_precision,
    check_preprocessing,
    check_soak,
    check_threshold,
    read_memory,
    read_soak,
    read_sweep,
)
from detserve.models.ship_failures import (
    SIZES,
    Failure,
    Failures,
    f1_at_threshold,
    find_failures,
    truth_by_image,
)
from detserve.models.ship_gallery import Tile, draw_tiles

REPORT_FILE = "report.html"


@dataclass(frozen=True)
class ShipInputs:
    package: Path
    data: Path
    soak: Path | None = None
    sweep: Path | None = None
    memory: Path | None = None
    reviewed_by: str | None = None
    slo_ms: float = 100.0
    per_group: int = 4  # gallery tiles per (kind, class, size): one row of the grid
    engine: str | None = None
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    limit: int | None = None
    batch_size: int = 8


@dataclass
class ShipReport:
    inputs: ShipInputs
    manifest: Manifest
    package_root: Path
    dataset: Path
    split: str | None
    engine: str
    metrics: CocoMetrics
    failures: Failures
    tiles: list[Tile]
    checks: list[Check]
    best_threshold: tuple[float, float] | None  # (threshold, F1) max F1 on this val set
    served_prf: tuple[float, float, float]  # precision, recall, F1 at the served threshold
    precision: dict[str, Any] | None
    soak: dict[str, Any] | None
    sweep: dict[str, Any] | None
    memory: dict[str, Any] | None
    created_utc: str
    command: str


def _evaluate(pkg: ModelPackage, coco: CocoSet, inputs: ShipInputs) -> tuple[str, list[Any]]:
    from detserve.engines.factory import create_engine

    kind = inputs.engine or default_engine_kind(pkg.manifest)
    engine = create_engine(pkg, kind, inputs.engine_options)
    try:
        return kind, predict_set(engine, coco, inputs.limit, inputs.batch_size)
    finally:
        engine.close()


def _subset(raw: Mapping[str, Any], ids: set[int]) -> dict[str, Any]:
    return {**raw, "images": [i for i in raw["images"] if int(i["id"]) in ids],
            "annotations": [a for a in raw["annotations"] if int(a["image_id"]) in ids]}


def worst_per_group(failures: Failures, classes: tuple[str, ...], k: int) -> list[Failure]:
    """The `k` worst of each (kind, class, size), in gallery order."""
    return [f for kind in ("FP", "FN") for c in classes for s in SIZES
            for f in failures.of(kind, c, s)[:k]]


def _tiles(coco: CocoSet, gt: Mapping[str, Any], preds: list[Any], failures: Failures,
           man: Manifest, k: int) -> list[Tile]:
    images = {i.id: i for i in coco.images}
    thr = man.postprocess.score_threshold
    shown: dict[int, Detections] = {p.image_id: p.detections.select(p.detections.scores >= thr)
                                    for p in preds}
    return draw_tiles(worst_per_group(failures, man.classes, k),
                      lambda i: coco.read_rgb(images[i]), lambda i: images[i].file_name,
                      truth_by_image(gt, man.classes), shown, man.classes)


def _precision_doc(pkg: ModelPackage) -> dict[str, Any] | None:
    path = pkg.root / "precision.json"
    return json.loads(path.read_text()) if path.is_file() else None


def build_report(inputs: ShipInputs) -> ShipReport:
    """Evaluate, mine, draw and check; raises SplitError on a test split."""
    pkg = load_package(inputs.package)
    coco = load_coco(inputs.data)
    split = dataset_split(coco.raw)
    if split == "test":
        raise SplitError("refusing the test split: the ship report looks at failures one by "
                         "one, which must never happen on test; give the val set")
    soak = read_soak(inputs.soak) if inputs.soak else None
    sweep = read_sweep(inputs.sweep) if inputs.sweep else None
    memory = read_memory(inputs.memory) if inputs.memory else None
    man = pkg.manifest
    kind, preds = _evaluate(pkg, coco, inputs)
    gt = _subset(coco.raw, {p.image_id for p in preds})
    metrics = coco_metrics(gt, preds, man.classes)
    failures = find_failures(gt, preds, man.classes, man.postprocess.score_threshold)
    best = choose_threshold(gt, preds, man.classes) if gt["annotations"] else None
    prf = f1_at_threshold(failures)
    tiles = _tiles(coco, gt, preds, failures, man, inputs.per_group)
    precision = _precision_doc(pkg)
    checks = [check_map(metrics.map50, metrics.map, metrics.n_images, metrics.n_objects, split),
              check_threshold(man, None if best is None else best.score_threshold,
                              None if best is None else best.f1, prf[2]),
              check_preprocessing(man), check_soak(soak, man),
              check_memory(soak, sweep, memory, man)]
    prec_check = check_precision(precision, man)
    if prec_check is not None:
        checks.append(prec_check)
    checks.append(check_gallery(failures.total("FP"), failures.total("FN"), len(tiles),
                                inputs.reviewed_by))
    return ShipReport(
        inputs=inputs, manifest=man, package_root=pkg.root, dataset=coco.path, split=split,
        engine=kind, metrics=metrics, failures=failures, tiles=tiles, checks=checks,
        best_threshold=None if best is None else (best.score_threshold, best.f1),
        served_prf=prf, precision=precision, soak=soak, sweep=sweep, memory=memory,
        created_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        command=shlex.join(["detserve-model", *sys.argv[1:]]) if sys.argv else "")


def write_report(report: ShipReport, out_dir: Path) -> Path:
    """report.html (every image inside it as a data URI) and report.json (the checklist)."""
    from detserve.models.ship_html import render

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    path.write_text(render(report), encoding="utf-8")
    summary = {"package": str(report.package_root), "dataset": str(report.dataset),
               "created_utc": report.created_utc, "engine": report.engine,
               "checks": [vars(c) for c in report.checks],
               "mAP@0.5": report.metrics.map50, "mAP@0.5:0.95": report.metrics.map,
               "false_positives": report.failures.total("FP"),
               "false_negatives": report.failures.total("FN")}
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


__all__ = ["REPORT_FILE", "ShipInputs", "ShipReport", "SplitError", "build_report",
           "write_report"]
