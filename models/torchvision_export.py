"""torchvision detectors to ONNX with the seed's snippet, parity against PyTorch, a package.

Runs in the optional environment that `bash models/torchvision_env.sh` makes (`.venv-tv`:
torch 2.14.1 + torchvision 0.29.1), never in the test install:

    .venv-tv/bin/detserve-model export-torchvision ssdlite320_mobilenet_v3_large \\
        --out runs/tv/ssdlite_320

(or `.venv-tv/bin/python -m detserve.models.torchvision_export`, the same arguments)

Weights are random: no pretrained weights can be fetched here, so the packages measure size,
speed and export fidelity, not accuracy. torchvision's own initialisation (`weights=None,
weights_backbone=None`) gives an SSDlite whose every score is exactly 1/(classes + 1) whatever
the image (measured: 1/7 on all 300 detections of three different inputs), which makes a parity
check vacuous; `lively` therefore redraws its convolutions He-normal (seeded), so scores and
boxes depend on the input. Faster R-CNN keeps torchvision's initialisation: it already answers
differently per input, while redrawing it left some inputs with no detection at all.

torchvision's detectors return a list of dicts, one per image, and their key order differs
(SSD: boxes, scores, labels; R-CNN: boxes, labels, scores), so flattening the dicts as they come
would put scores under the name "labels". `PerImageOutputs` returns (boxes, labels, scores) per
image in that order, and that wrapper is what the snippet exports. The models loop over the
images in Python, so the trace unrolls the loop at the dummy's batch: the graph is exported at
batch 1 (three outputs), its `dynamic_axes` batch is only nominal (`batch_probe` in the report
says what a batch of 2 does), and the server's ONNX Runtime engine runs it image by image.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from detserve.engines.manifest import Manifest, Postprocess, Preprocess, write_manifest

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")  # the default model's
MODEL_FILE = "detector.onnx"  # the name the seed's snippet writes
SEED = 0


@dataclass(frozen=True)
class Arch:
    build: Callable[[int, int], nn.Module]  # (num_classes with background, input size)
    sizes: tuple[int, ...]  # input sizes the architecture takes
    score_floor: float  # the graph's own score threshold (torchvision's default)
    iou: float  # the graph's NMS IoU (torchvision's default)
    max_detections: int  # the graph's detections_per_img (torchvision's default)
    redraw: bool  # torchvision's initialisation is input-independent: redraw it (`lively`)


def _ssdlite(num_classes: int, size: int) -> nn.Module:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    # Its transform resizes every input to 320 x 320, whatever `size`.
    model: nn.Module = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                     num_classes=num_classes)
    return model


def _faster_rcnn(num_classes: int, size: int) -> nn.Module:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    # min_size/max_size = the served input, so the model's own resize (800 by default) is a no-op.
    model: nn.Module = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=size, max_size=size
    )
    return model


ARCHS = {
    "ssdlite320_mobilenet_v3_large": Arch(_ssdlite, (320,), 0.001, 0.55, 300, redraw=True),
    "fasterrcnn_resnet50_fpn": Arch(_faster_rcnn, (320, 640, 1280), 0.05, 0.5, 100, redraw=False),
}


class PerImageOutputs(nn.Module):
    """A torchvision detector whose list of dicts becomes (boxes, labels, scores) per image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat: list[torch.Tensor] = []
        for det in self.model(images):
            flat += [det["boxes"], det["labels"], det["scores"]]
        return tuple(flat)


def lively(model: nn.Module, seed: int = SEED) -> None:
    """Random weights whose outputs depend on the input: He-normal convolutions, N(0, 0.5)
    biases (see the module docstring for why torchvision's own initialisation will not do)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.5)


def build(arch: str, size: int) -> PerImageOutputs:
    torch.manual_seed(SEED)
    model = ARCHS[arch].build(len(CLASSES) + 1, size)
    if ARCHS[arch].redraw:
        lively(model)
    return PerImageOutputs(model).eval()


def export(model: nn.Module, size: int, out_dir: Path) -> dict[str, Any]:
    """The seed's snippet, verbatim, run inside `out_dir`; falls back to the TorchScript
    exporter (dynamo=False) if the default one fails, and says so."""
    dummy = torch.rand(1, 3, size, size)
    with contextlib.chdir(out_dir), torch.no_grad():
        try:
            torch.onnx.export(model, dummy, "detector.onnx", input_names=["images"], output_names=["boxes", "labels", "scores"], opset_version=17, dynamic_axes={"images": {0: "batch"}})  # type: ignore[arg-type]  # noqa: E501
            return {"exporter": "torch.onnx.export default (seed snippet verbatim)"}
        except Exception as exc:  # the dynamo exporter raises many kinds
            first = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            torch.onnx.export(model, dummy, "detector.onnx", input_names=["images"], output_names=["boxes", "labels", "scores"], opset_version=17, dynamic_axes={"images": {0: "batch"}}, dynamo=False)  # type: ignore[arg-type]  # noqa: E501
            return {"exporter": "seed snippet + dynamo=False (TorchScript exporter)",
                    "default_exporter_error": first}  # fmt: skip


def parity_inputs(size: int) -> list[np.ndarray]:
    """Noise, flat letterbox grey and blocky colour images, one image each."""
    rng = np.random.default_rng(SEED)
    blocks = rng.random((3, size // 16, size // 16), dtype=np.float32).repeat(16, 1).repeat(16, 2)
    noise = rng.random((3, size, size), dtype=np.float32)
    grey = np.full((3, size, size), 114 / 255, np.float32)
    return [x[None] for x in (noise, grey, blocks)]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("DETSERVE_ORT_THREADS", "2"))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def parity(model: nn.Module, session: ort.InferenceSession, size: int) -> dict[str, Any]:
    """Max abs diff of ONNX Runtime against PyTorch, per output, over the parity inputs."""
    rows = []
    for x in parity_inputs(size):
        with torch.no_grad():
            want = [t.numpy() for t in model(torch.from_numpy(x))]
        got = session.run(None, {"images": x})
        n = min(len(want[0]), len(got[0]))
        rows.append({
            "detections_torch": len(want[0]), "detections_ort": len(got[0]),
            "max_abs_diff_boxes": float(np.abs(want[0][:n] - got[0][:n]).max(initial=0.0)),
            "labels_equal": bool(np.array_equal(want[1][:n], got[1][:n])),
            "max_abs_diff_scores": float(np.abs(want[2][:n] - got[2][:n]).max(initial=0.0)),
            **_matched_diff(want, got),
        })  # fmt: skip
    return {
        "inputs": ["noise", "grey 114", "blocks"],
        "per_input": rows,
        "max_abs_diff_boxes": max(r["max_abs_diff_boxes"] for r in rows),
        "max_abs_diff_scores": max(r["max_abs_diff_scores"] for r in rows),
        "matched_max_abs_diff_boxes": max(r["matched_max_abs_diff_boxes"] for r in rows),
        "matched_max_abs_diff_scores": max(r["matched_max_abs_diff_scores"] for r in rows),
        "counts_equal": all(r["detections_torch"] == r["detections_ort"] for r in rows),
        "labels_equal": all(r["labels_equal"] for r in rows),
    }


def _matched_diff(want: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> dict[str, float]:
    """Row order aside: each ONNX Runtime detection against the PyTorch one of the same label
    nearest to it. Equal scores may leave NMS and top-k in either order on the two runtimes, so
    a row-by-row diff can be large while the two sets of detections are the same."""
    boxes, scores = 0.0, 0.0
    for box, label, score in zip(got[0], got[1], got[2], strict=True):
        same = np.flatnonzero(want[1] == label)
        if same.size == 0:
            return {"matched_max_abs_diff_boxes": float("inf"),
                    "matched_max_abs_diff_scores": float("inf")}  # fmt: skip
        dist = np.abs(want[0][same] - box).max(axis=1)
        j = same[int(dist.argmin())]
        boxes, scores = max(boxes, float(dist.min())), max(scores, abs(float(want[2][j] - score)))
    return {"matched_max_abs_diff_boxes": boxes, "matched_max_abs_diff_scores": scores}


def batch_probe(session: ort.InferenceSession, size: int) -> str:
    """What the batch-1 graph does with a batch of 2, despite its dynamic batch axis."""
    x = np.concatenate(parity_inputs(size)[:2])
    try:
        got = session.run(None, {"images": x})
    except Exception as exc:  # ORT raises its own exception types
        return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    one = session.run(None, {"images": x[:1]})
    same = all(np.array_equal(a, b) for a, b in zip(got, one, strict=True))
    return (f"ran, {len(got)} outputs" + (": image 0's detections only, image 1 dropped"
            if same else ": outputs differ from image 0 alone"))  # fmt: skip


def gflops(model: nn.Module, size: int) -> float:
    """GFLOPs of one image (2 per multiply-add), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def torch_ms(model: nn.Module, size: int, runs: int = 5) -> float:
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def manifest(arch: str, size: int, facts: dict[str, Any]) -> Manifest:
    a = ARCHS[arch]
    return Manifest(
        name=arch.split("_")[0], version="random-weights", classes=CLASSES,
        input_width=size, input_height=size, model_file=MODEL_FILE, max_batch_size=8,
        output_format="torchvision", nms="in-graph", label_offset=1,
        # The model normalises inside (its transform), so the server only scales to [0, 1].
        preprocess=Preprocess(),
        postprocess=Postprocess(score_threshold=a.score_floor, iou_threshold=a.iou,
                                max_detections=a.max_detections),
        metadata={"torchvision": facts},
    )


def run(arch: str, size: int, out_dir: Path) -> dict[str, Any]:
    if size not in ARCHS[arch].sizes:
        raise ValueError(f"{arch} takes input sizes {list(ARCHS[arch].sizes)}, not {size}")
    import torchvision

    out_dir.mkdir(parents=True, exist_ok=True)
    model = build(arch, size)
    t0 = time.perf_counter()
    facts: dict[str, Any] = {"arch": arch, "input_size": size, **export(model, size, out_dir)}
    facts["export_s"] = round(time.perf_counter() - t0, 1)
    session = _session(out_dir / MODEL_FILE)
    facts.update({
        "weights": f"random: weights=None, weights_backbone=None, torch.manual_seed({SEED})"
                   + (", convolutions redrawn He-normal (models/torchvision_export.py lively)"
                      if ARCHS[arch].redraw else ", torchvision's initialisation"),
        "num_classes_with_background": len(CLASSES) + 1,
        "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
        "parameters": sum(p.numel() for p in model.parameters()),
        "onnx_bytes": (out_dir / MODEL_FILE).stat().st_size,
        "onnx_outputs": [[o.name, list(o.shape)] for o in session.get_outputs()],
        "gflops": round(gflops(model, size), 2),
        "torch_ms_batch1": round(torch_ms(model, size), 1),
        "parity": parity(model, session, size),
        "batch_probe": batch_probe(session, size),
    })  # fmt: skip
    (out_dir / "export.json").write_text(json.dumps(facts, indent=2) + "\n")
    write_manifest(manifest(arch, size, facts), out_dir)
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detserve.models.torchvision_export",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("arch", choices=sorted(ARCHS))
    p.add_argument("--out", required=True, type=Path, help="package directory to write")
    p.add_argument("--input-size", type=int, default=320)
    args = p.parse_args(argv)
    try:
        facts = run(args.arch, args.input_size, args.out)
    except ValueError as exc:
        print(f"torchvision_export: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
