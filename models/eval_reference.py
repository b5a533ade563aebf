"""The server's distribution-shift reference, from an evaluation on val.

`detserve-model eval --store-reference` (and `--choose-threshold`, which changes the threshold
the reference counts at) writes the histograms of detections per image and max score per image,
at the package's serving score threshold, into the manifest as `metadata.drift_reference`
(format: engines/drift_reference.py; the bins are the val set's deciles). Refused on the test
split, like the threshold: test never shapes the package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from detserve.engines.drift_reference import METADATA_KEY, build_reference
from detserve.engines.manifest import load_package, write_manifest
from detserve.models.evaluate_metrics import ImageDetections


def eval_reference(preds: Sequence[ImageDetections], score_threshold: float,
                   details: Mapping[str, Any]) -> dict[str, Any]:
    """The `drift_reference` mapping of `preds` counted at `score_threshold`."""
    threshold = round(score_threshold, 4)  # as the manifest stores it
    counts, tops = [], []
    for p in preds:
        scores = [float(s) for s in p.detections.scores.tolist() if s >= threshold]
        counts.append(len(scores))
        if scores:
            tops.append(max(scores))
    ref = build_reference(counts, tops, threshold, "package",
                          {"source": "detserve-model eval", **details})
    return ref.to_metadata()


def store_reference(package: str | Path, reference: Mapping[str, Any] | None,
                    split: str | None) -> Path:
    """Write `reference` into the package's manifest metadata; returns the manifest path."""
    from detserve.models.evaluate import SplitError

    if split == "test":
        raise SplitError("refusing to store a drift reference from the test split; use val")
    if reference is None:
        raise ValueError("the evaluation has no drift reference (no images evaluated)")
    pkg = load_package(package)
    threshold = pkg.manifest.postprocess.score_threshold
    if float(reference["score_threshold"]) + 1e-6 < threshold:
        raise ValueError(f"the reference counts detections at score >= "
                         f"{reference['score_threshold']}, below the package's score_threshold "
                         f"{threshold}: the server could not reproduce it")
    meta = {**pkg.manifest.metadata, METADATA_KEY: dict(reference)}
    path: Path = write_manifest(replace(pkg.manifest, metadata=meta), pkg.root)
    return path
