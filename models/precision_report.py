"""FP32 against a lower-precision package, side by side: overall, per object size, per class.

Quantization hurts small objects and fine boxes first, so a single mAP number can hide a class
or a size that fell apart. Every row is compared, and any row that loses more than `margin`
points (AP x 100) is flagged.

Each side runs on its package's own engine unless one is named per side, so ONNX Runtime FP32
can be set against OpenVINO INT8. A side whose graph hides detections eval would count (in-graph
NMS with a higher score threshold) gets a warning in the report: its "loss" is not precision's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from detserve.models.evaluate_metrics import CocoMetrics

DEFAULT_MARGIN = 1.0


@dataclass(frozen=True)
class MetricRow:
    group: str  # "overall", "size" or "class"
    metric: str
    base: float | None
    other: float | None

    @property
    def delta_points(self) -> float | None:
        """other - base in AP points (x 100); None where either side has no ground truth."""
        if self.base is None or self.other is None:
            return None
        return (self.other - self.base) * 100.0

    def flagged(self, margin: float) -> bool:
        delta = self.delta_points
        return delta is not None and delta < -margin


@dataclass(frozen=True)
class PrecisionComparison:
    base_label: str
    other_label: str
    margin_points: float
    rows: tuple[MetricRow, ...]
    warnings: tuple[str, ...] = ()
    engines: tuple[str, str] | None = None  # (base, other) engine kinds, when packages ran

    @property
    def flagged(self) -> list[MetricRow]:
        return [r for r in self.rows if r.flagged(self.margin_points)]

    def row(self, metric: str) -> MetricRow:
        for r in self.rows:
            if r.metric == metric:
                return r
        raise KeyError(f"no row {metric!r}; rows are {[r.metric for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base_label,
            "other": self.other_label,
            "margin_points": self.margin_points,
            "rows": [{**asdict(r), "delta_points": r.delta_points} for r in self.rows],
            "flagged": [r.metric for r in self.flagged],
            "warnings": list(self.warnings),
            "engines": None if self.engines is None else list(self.engines),
        }

    def to_markdown(self) -> str:
        lines = [
            f"| group | metric | {self.base_label} | {self.other_label} | delta (points) | flag |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            flag = f"LOSS > {self.margin_points:g}" if r.flagged(self.margin_points) else ""
            lines.append(
                f"| {r.group} | {r.metric} | {_fmt(r.base)} | {_fmt(r.other)} | "
                f"{_delta(r.delta_points)} | {flag} |"
            )
        n = len(self.flagged)
        lines += ["", f"{n} row(s) lose more than {self.margin_points:g} point(s)."]
        lines += [f"\n{w}" for w in self.warnings]
        return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _delta(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def _pairs(
    group: str, suffix: str, base: Mapping[str, float | None], other: Mapping[str, float | None]
) -> list[MetricRow]:
    return [MetricRow(group, f"{k}{suffix}", base[k], other.get(k)) for k in base]


def compare_metrics(
    base: CocoMetrics,
    other: CocoMetrics,
    margin_points: float = DEFAULT_MARGIN,
    labels: tuple[str, str] = ("fp32", "int8"),
) -> PrecisionComparison:
    """Row-by-row comparison of two evaluations of the same images."""
    if margin_points < 0:
        raise ValueError(f"--margin must be >= 0 points, got {margin_points}")
    if (base.n_images, base.n_objects) != (other.n_images, other.n_objects):
        raise ValueError(
            f"the evaluations cover different sets: {base.n_images} images / {base.n_objects} "
            f"objects against {other.n_images} / {other.n_objects}"
        )
    rows = [
        MetricRow("overall", "mAP@0.5", base.map50, other.map50),
        MetricRow("overall", "mAP@0.5:0.95", base.map, other.map),
        *_pairs("size", "@0.5", _prefixed(base.ap_size50), _prefixed(other.ap_size50)),
        *_pairs("size", "@0.5:0.95", _prefixed(base.ap_size), _prefixed(other.ap_size)),
        *_pairs("class", " AP@0.5", _class_ap(base), _class_ap(other)),
    ]
    return PrecisionComparison(labels[0], labels[1], margin_points, tuple(rows))


def _prefixed(sizes: Mapping[str, float | None]) -> dict[str, float | None]:
    return {f"AP_{k}": v for k, v in sizes.items()}


def _class_ap(m: CocoMetrics) -> dict[str, float | None]:
    return {name: c.ap50 for name, c in m.per_class.items()}


def compare_packages(
    base_dir: str | Path,
    other_dir: str | Path,
    data: str | Path,
    limit: int | None = None,
    margin_points: float = DEFAULT_MARGIN,
    engines: tuple[str | None, str | None] = (None, None),
) -> PrecisionComparison:
    """Evaluate both packages on the same COCO set through the server's path and compare.
    `engines`: (base, other) engine kinds; None is that package's own."""
    from detserve.engines.manifest import load_package
    from detserve.models.evaluate import evaluate_package

    dirs = (base_dir, other_dir)
    reports = [evaluate_package(d, data, kind, limit=limit) for d, kind in zip(dirs, engines,
                                                                                strict=True)]
    kinds = (reports[0].engine, reports[1].engine)
    labels = (load_package(base_dir).manifest.precision, load_package(other_dir).manifest.precision)
    if labels[0] == labels[1]:  # same precision (e.g. host against in-graph NMS): use folders
        labels = (_folder(base_dir), _folder(other_dir))
    if kinds[0] != kinds[1] or labels[0] == labels[1]:
        labels = (f"{labels[0]} ({kinds[0]})", f"{labels[1]} ({kinds[1]})")
    cmp = compare_metrics(reports[0].metrics, reports[1].metrics, margin_points, labels)
    warnings = tuple(w for r in reports for w in r.warnings)
    return replace(cmp, warnings=warnings, engines=kinds)


def _folder(package: str | Path) -> str:
    path = Path(package)
    return path.parent.name if path.name == "manifest.yaml" else path.name


def write_comparison(cmp: PrecisionComparison, out_dir: str | Path) -> tuple[Path, Path]:
    """`precision.json` and `precision.md` in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "precision.json", out / "precision.md"
    js.write_text(json.dumps(cmp.to_dict(), indent=2) + "\n")
    md.write_text(cmp.to_markdown())
    return js, md
