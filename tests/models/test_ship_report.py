"""The ship report on the real served package and a small real val set: every checklist item
from real evidence (the committed soak, sweep and memory results), failures that must be found
(an annotation taken out of the set becomes a false positive, one put into an empty corner a
false negative), the test split refused, and the page rendered by a real browser (chromium):
the screenshot is not blank and every gallery image loaded."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import detserve.models
from detserve.engines.manifest import load_package
from detserve.models.cli import main as model_main
from detserve.models.evaluate_metrics import box_iou
from detserve.models.scenes import write_coco
from detserve.models.ship_evidence import check_soak
from detserve.models.ship_report import ShipInputs, ShipReport, build_report, write_report

PACKAGES = Path(detserve.models.__file__).parent / "packages"
SERVED = PACKAGES / "shapes_320_int8"
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
SOAK, SWEEP = RESULTS / "soak" / "results.json", RESULTS / "unary_sweep" / "results.json"
MEMORY = RESULTS / "memory" / "results.json"
STAR = 3  # class index of "star"
CORNER = [2.0, 2.0, 14.0, 14.0]  # x, y, w, h: an empty top-left corner in the edited image


@pytest.fixture(scope="module")
def val_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """10 real val scenes, edited: image 1 loses its first annotation, image 2 gains a star
    in its top-left corner, where nothing is drawn."""
    root = tmp_path_factory.mktemp("ship")
    path = write_coco(root, "val", 10)
    doc = json.loads(path.read_text())
    removed = next(a for a in doc["annotations"] if a["image_id"] == 1 and a["area"] > 32**2)
    doc["annotations"].remove(removed)
    doc["annotations"].append({"id": 99999, "image_id": 2, "category_id": STAR + 1,
                               "bbox": CORNER, "area": CORNER[2] * CORNER[3], "iscrowd": 0})
    path.write_text(json.dumps(doc))
    return path, removed


@pytest.fixture(scope="module")
def report(val_set: tuple[Path, dict[str, Any]]) -> ShipReport:
    return build_report(ShipInputs(SERVED, val_set[0], soak=SOAK, sweep=SWEEP, memory=MEMORY))


def _xyxy(xywh: list[float]) -> np.ndarray:
    x, y, w, h = xywh
    return np.array([[x, y, x + w, y + h]], np.float32)


def test_checklist_from_real_evidence(report: ShipReport) -> None:
    by_key = {c.key: c for c in report.checks}
    assert [c.key for c in report.checks] == ["accuracy", "threshold", "preprocessing",
                                              "latency", "memory", "precision", "gallery"]
    assert all(c.passed for c in report.checks if c.key != "gallery")
    assert f"mAP@0.5 = {report.metrics.map50:.3f}" in by_key["accuracy"].evidence
    assert "IoU 0.50:0.05:0.95" in by_key["accuracy"].evidence
    threshold = by_key["threshold"].evidence
    assert "0.3914" in threshold and "its FP32 parent" in threshold and "'val'" in threshold
    assert "RGB channel order, letterbox to 320×320 (pad value 114), scale 1/255" in \
        by_key["preprocessing"].evidence
    soak = json.loads(SOAK.read_text())["soak"]["summary"]
    assert f"worst minute p99 {soak['worst_p99_ms']:.1f} ms" in by_key["latency"].evidence
    assert "0 lose more than 1 point" in by_key["precision"].evidence
    gallery = by_key["gallery"]
    assert not gallery.passed and "not reviewed yet" in gallery.evidence
    assert f"{report.failures.total('FP')} false positives" in gallery.evidence


def test_failures_found_where_the_set_was_edited(report: ShipReport,
                                                 val_set: tuple[Path, dict[str, Any]]) -> None:
    _, removed = val_set
    fps = [f for f in report.failures.items if f.kind == "FP" and f.image_id == 1]
    name = report.manifest.classes[removed["category_id"] - 1]
    hit = [f for f in fps if f.class_name == name
           and box_iou(np.array([f.box], np.float32), _xyxy(removed["bbox"]))[0, 0] >= 0.5]
    # Its object is no longer labelled: nothing of its class is there to match.
    assert hit and hit[0].reason.split(":")[0] in ("background", "wrong class",
                                                   "poorly localised")
    fns = [f for f in report.failures.items if f.kind == "FN" and f.image_id == 2]
    corner = [f for f in fns if f.box == (2.0, 2.0, 16.0, 16.0)]
    assert len(corner) == 1 and corner[0].class_name == "star" and corner[0].size == "small"
    assert corner[0].reason == "no detection of its class near it"
    # Counts add up: every detection at the threshold is a TP or an FP.
    counts = report.failures.counts
    assert sum(c.fp for c in counts.values()) == report.failures.total("FP")
    p, r, f1 = report.served_prf
    assert 0.5 < p <= 1 and 0.5 < r <= 1 and f1 == pytest.approx(2 * p * r / (p + r))


def test_short_soak_or_another_model_fails_the_latency_item(report: ShipReport) -> None:
    doc = json.loads(SOAK.read_text())
    short = copy.deepcopy(doc)
    short["soak"]["summary"]["duration_s"] = 60.0
    assert not check_soak(short, report.manifest).passed
    other = check_soak(doc, load_package(PACKAGES / "shapes_640_int8").manifest)
    assert not other.passed and "not this package" in other.evidence
    assert not check_soak(None, report.manifest).passed


def test_page_embeds_every_tile(report: ShipReport, tmp_path: Path) -> None:
    page = write_report(report, tmp_path).read_text()
    tiles = re.findall(r'<figure class="tile (fp|fn)"><img [^>]*src="data:image/jpeg;base64,'
                       r'([^"]+)"', page)
    assert len(tiles) == len(report.tiles) > 0
    first = cv2.imdecode(np.frombuffer(base64.b64decode(tiles[0][1]), np.uint8), 1)
    assert first is not None and max(first.shape[:2]) == 240
    assert page.count("✅") == 6 and page.count("❌") == 1
    assert "<h2>Failure gallery</h2>" in page and "FP32 vs INT8" in page
    summary = json.loads((tmp_path / "report.json").read_text())
    assert [c["passed"] for c in summary["checks"]] == [True] * 6 + [False]


def test_cli_review_and_test_split(val_set: tuple[Path, dict[str, Any]], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = model_main(["report", str(SERVED), "--data", str(val_set[0]), "--soak", str(SOAK),
                       "--memory", str(MEMORY), "--reviewed-by", "A. Reviewer", "--limit", "4",
                       "--out", str(tmp_path / "r")])
    assert code == 0
    out = capsys.readouterr().out
    assert "✅ failure gallery reviewed by the team" in out and "A. Reviewer" in out
    test_set = write_coco(tmp_path, "test", 2)
    code = model_main(["report", str(SERVED), "--data", str(test_set), "--out",
                       str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "refusing the test split" in err
    assert not (tmp_path / "t" / "report.html").exists()


CHECK_IMAGES = """<script>window.addEventListener('load', () => {
  const all = Array.from(document.images);
  const tiles = all.filter(i => i.closest('figure.tile'));
  document.body.dataset.total = all.length;
  document.body.dataset.loaded = all.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.tiles = tiles.filter(i => i.naturalWidth === 240 ||
    i.naturalHeight === 240).length;
});</script></body>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    return found


def test_chromium_renders_the_page(report: ShipReport, tmp_path: Path) -> None:
    browser = _chromium()
    page = write_report(report, tmp_path / "out")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", CHECK_IMAGES))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=10000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body ([^>]*)>", dom.stdout)
    assert body is not None, dom.stderr[-2000:]
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(1)))
    assert int(attrs["total"]) == int(attrs["loaded"]) >= len(report.tiles) > 0
    assert int(attrs["tiles"]) == len(report.tiles)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1280,2000",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2000, 1280)
    assert img.std() > 20  # not blank
    header = img[:60].reshape(-1, 3).mean(axis=0)
    assert header.max() < 90  # the dark header band came out
    colours = np.unique((img // 32).reshape(-1, 3), axis=0)
    assert len(colours) > 20
