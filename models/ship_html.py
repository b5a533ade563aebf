"""The ship report as one HTML page: the checklist first, then a section per item with its
evidence, then the failure gallery. Every image is inside the page (base64 data URIs), so the
file can be mailed or attached to a review as it is."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detserve.models import ship_sections as sec
from detserve.models.ship_css import CSS
from detserve.models.ship_failures import SIZES
from detserve.models.ship_gallery import LEGEND, Tile, hex_color
from detserve.models.ship_report import ShipReport

e = html.escape


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(path: Path) -> str | None:
    return data_uri(path.read_bytes(), "image/png") if path.is_file() else None


def _header(r: ShipReport) -> str:
    m = r.manifest
    passed = sum(c.passed for c in r.checks)
    failing = [c.title for c in r.checks if not c.passed]
    verdict = ("ready to ship" if not failing else
               f"{len(failing)} item{'s' if len(failing) > 1 else ''} open")
    return f"""<header><div class="wrap">
<p class="kicker">detserve ship report</p>
<h1>{e(m.name)} v{e(m.version)} <span class="tag">{e(m.precision)}</span>
<span class="tag">{m.input_width}×{m.input_height}</span><span class="tag">{e(r.engine)}</span></h1>
<p class="meta">package <code>{e(str(r.package_root))}</code> · val set <code>{e(str(r.dataset))}
</code> · generated {e(r.created_utc)}</p>
<div class="verdict {'ok' if not failing else 'bad'}"><strong>{passed} of {len(r.checks)}
</strong> checklist items pass: {e(verdict)}</div>
</div></header>"""


def _checklist(r: ShipReport) -> str:
    rows = "".join(
        f"<tr class=\"{'ok' if c.passed else 'bad'}\"><td class=\"status\">"
        f"{'✅' if c.passed else '❌'}</td><td class=\"item\"><a href=\"#{e(c.key)}\">"
        f"{e(c.title)}</a></td><td>{e(c.evidence)}</td></tr>" for c in r.checks)
    return (f"<section id=\"checklist\"><h2>Ship checklist</h2><table class=\"checklist\">"
            f"<thead><tr><th></th><th>item</th><th>evidence</th></tr></thead><tbody>{rows}"
            "</tbody></table></section>")


def _tile(t: Tile) -> str:
    f = t.failure
    x1, y1, x2, y2 = f.box
    score = (f"score {f.score:.2f}" if f.kind == "FP" else
             f"best score of its class {f.score:.2f}" if f.score > 0 else "no box of its class")
    return (f"<figure class=\"tile {f.kind.lower()}\"><img alt=\"{e(f.kind)} {e(f.class_name)}\" "
            f"src=\"{data_uri(t.jpeg, 'image/jpeg')}\"><figcaption><b>{e(f.kind)} · "
            f"{e(f.class_name)} · {f.size}</b> · {score}<br>{e(f.reason)}<br><span "
            f"class=\"muted\">{e(t.file_name)} (id {f.image_id}), box {x2 - x1:.0f}×"
            f"{y2 - y1:.0f} px at ({x1:.0f}, {y1:.0f})</span></figcaption></figure>")


def _gallery_kind(r: ShipReport, kind: str, title: str) -> str:
    parts = [f"<h3>{e(title)} ({r.failures.total(kind)} in all)</h3>"]
    by_group: dict[tuple[str, str], list[Tile]] = {}
    for t in r.tiles:
        if t.failure.kind == kind:
            by_group.setdefault((t.failure.class_name, t.failure.size), []).append(t)
    for c in r.manifest.classes:
        rows = []
        for s in SIZES:
            group = by_group.get((c, s))
            n = len(r.failures.of(kind, c, s))
            if group:
                rows.append(f"<div class=\"group\"><p class=\"group-title\">{e(c)} · {s} · "
                            f"{len(group)} of {n} shown</p><div class=\"tiles\">"
                            + "".join(_tile(t) for t in group) + "</div></div>")
        if rows:
            parts.append(f"<h4>{e(c)}</h4>" + "".join(rows))
    if len(parts) == 1:
        parts.append("<p class=\"muted\">None at the served threshold.</p>")
    return "".join(parts)


def _gallery(r: ShipReport) -> str:
    legend = "".join(f"<span class=\"key\"><i style=\"border-color:{hex_color(c)}\"></i>"
                     f"{e(n)}</span>" for n, c in LEGEND)
    thr = r.manifest.postprocess.score_threshold
    return (f"<section id=\"gallery\"><h2>Failure gallery</h2><p>At the served threshold "
            f"{thr:g}, matched at IoU {0.5:g} per class (COCO's rule). The worst "
            f"{r.inputs.per_group} of each class and size: false positives by score, highest "
            "first; missed objects by the best score any box of their class gave them, lowest "
            f"first. Each tile is a crop around the failure, enlarged.</p>"
            f"<p class=\"legend\">{legend}</p>"
            f"{_gallery_kind(r, 'FP', 'False positives')}"
            f"{_gallery_kind(r, 'FN', 'False negatives (missed objects)')}</section>")


def _images(paths: Sequence[Path]) -> str:
    out = []
    for p in paths:
        uri = png_uri(p)
        if uri is not None:
            out.append(f"<img class=\"plot\" alt=\"{e(p.name)}\" src=\"{uri}\">")
    return "".join(out)


def _plots_beside(results: Path | None, names: Sequence[str]) -> str:
    """The PNGs a benchmark wrote next to its results.json (named after the results file)."""
    if results is None:
        return ""
    prefix = "" if results.stem == "results" else f"{results.stem}-"
    return _images([results.parent / f"{prefix}{n}" for n in names])


def render(r: ShipReport) -> str:
    """The whole page."""
    body: list[Any] = [
        _header(r), "<main class=\"wrap\">", _checklist(r), sec.accuracy(r), sec.threshold(r),
        sec.preprocessing(r),
        sec.latency(r, _plots_beside(r.inputs.soak, ("soak_minutes.png", "soak_resources.png"))),
        sec.memory(r, _plots_beside(r.inputs.memory, ("memory.png",))),
        sec.capacity(r), sec.precision(r), _gallery(r), sec.footer(r), "</main>"]
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta "
            "name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Ship "
            f"report: {e(r.manifest.name)} v{e(r.manifest.version)}</title><style>{CSS}"
            "</style></head><body>" + "".join(body) + "</body></html>")
