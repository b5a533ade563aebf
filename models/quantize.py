"""The precision ladder's lower rungs: ONNX Runtime static INT8 (QDQ) and FP16 packages.

INT8 (post-training, static):
- Calibration images come from a set disjoint from val and test: synthetic scenes of the
  "calib" split (`split_seeds("calib", n)`, seeds from `CALIB_SEED_START`; train, val and test
  have their own ranges in `detserve.models.scenes`), or a folder of images; a COCO folder
  labelled val or test is refused.
  They go through the server's own preprocessing (`detserve.engines.preprocess.prepare`).
- `onnxruntime.quantization`'s pre-processing (shape inference + optimisation) runs first.
- QDQ format, int8 weights per output channel, uint8 activations, MinMax / Entropy / Percentile.
- The float tail stays float (`float_tail_nodes`): box coordinates (0..640) and sigmoid scores
  (0..1) concatenated into one tensor would share one quantization scale, which wipes out score
  resolution; the DFL expectation (softmax + fixed 1x1 conv) is kept float for box precision.
FP16: onnxconverter-common with float32 inputs/outputs kept, meant for GPU engines.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx

from detserve.engines.manifest import Manifest, ModelPackage, load_package, write_manifest
from detserve.models.scenes import split_seeds

CALIB_SEED_START = split_seeds("calib", 1)[0]
CALIB_MAX = 10_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# Ops that carry a model's learned weights: the float tail search stops at them, except a conv
# fed by a softmax (the DFL expectation, whose weights are the fixed bins 0..reg_max-1).
_WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_STALE_KEYS = ("val_metrics", "score_threshold_choice")
Method = Literal["minmax", "entropy", "percentile"]
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
QUANT_TARGETS: tuple[str, ...] = ("cpu", "tensorrt")


@dataclass(frozen=True)
class CalibrationSource:
    """Where calibration images come from: "synthetic" or a folder of images."""

    spec: str
    n: int

    def __post_init__(self) -> None:
        if not 1 <= self.n <= CALIB_MAX:
            raise ValueError(f"calibration count --n must be in [1, {CALIB_MAX}], got {self.n}")

    @property
    def synthetic(self) -> bool:
        return self.spec == "synthetic"

    def describe(self) -> dict[str, Any]:
        if self.synthetic:
            return {
                "source": "synthetic scenes (detserve.models.scenes.render_scene)",
                "seeds": f"[{CALIB_SEED_START}, {CALIB_SEED_START + self.n})",
                "sizes": "VAL_SIZES, cycled",
                "images": self.n,
                "split": "calib",
                "disjoint_from": "train [0, 10M), val [10M, 20M), test [20M, 30M)",
            }
        return {"source": str(Path(self.spec).resolve()), "images": self.n}


def calib_seeds(n: int) -> list[int]:
    """The synthetic calibration scenes' seeds: the first `n` of the "calib" split."""
    if not 0 <= n <= CALIB_MAX:
        raise ValueError(f"n must be in [0, {CALIB_MAX}], got {n}")
    return split_seeds("calib", n)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"--calib must be 'synthetic' or a folder of images, got {str(folder)!r}")
    # A COCO set keeps its images in <set>/images/ next to <set>/annotations.json.
    for ann in (folder / "annotations.json", folder.parent / "annotations.json"):
        if not ann.is_file():
            continue
        from detserve.models.evaluate import dataset_split

        split = dataset_split(json.loads(ann.read_text()))
        if split in ("val", "test"):
            raise ValueError(
                f"calibration folder {str(folder)!r} is the {split} split; calibrate on images "
                "disjoint from val and test (train images, or --calib synthetic)"
            )
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def calibration_files(source: CalibrationSource) -> list[Path]:
    """The first `source.n` images of a calibration folder (checked: exists, not val/test)."""
    files = _image_files(Path(source.spec))
    if len(files) < source.n:
        raise ValueError(
            f"calibration folder {source.spec!r} has {len(files)} images, --n asks for {source.n}"
        )
    return files[: source.n]


def calibration_images(source: CalibrationSource) -> Iterator[npt.NDArray[np.uint8]]:
    """`source.n` HxWx3 uint8 RGB images."""
    if source.synthetic:
        from detserve.models.scenes import VAL_SIZES, render_scene

        for i, seed in enumerate(calib_seeds(source.n)):
            w, h = VAL_SIZES[i % len(VAL_SIZES)]
            yield render_scene(seed, w, h).image
        return
    import cv2

    for path in calibration_files(source):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read calibration image {str(path)!r}")
        yield np.ascontiguousarray(bgr[:, :, ::-1])


def calibration_batches(
    source: CalibrationSource, manifest: Manifest, batch_size: int = 8
) -> Iterator[npt.NDArray[np.float32]]:
    """Preprocessed [B, 3, H, W] batches, exactly as the server would feed the model."""
    from detserve.engines.preprocess import prepare

    chunk: list[npt.NDArray[np.float32]] = []
    for image in calibration_images(source):
        chunk.append(prepare(image, manifest).tensor)
        if len(chunk) == batch_size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def float_tail_nodes(model: onnx.ModelProto, include_head: bool = False) -> list[str]:
    """Names of the nodes between the last learned layers and the outputs (kept in float).

    `include_head` also keeps those last learned layers (the detection head's output convs)
    in float: they regress box distances and class logits, where int8 steps hurt most.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    softmax_outputs = {o for n in model.graph.node if n.op_type == "Softmax" for o in n.output}
    seen: set[str] = set()
    tail: list[str] = []
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        is_dfl = node.op_type == "Conv" and node.input[0] in softmax_outputs
        if node.op_type in _WEIGHT_OPS and not is_dfl:
            if include_head:
                tail.append(node.name)
            continue
        tail.append(node.name)
        stack.extend(i for i in node.input if i)
    return tail


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name: nodes_to_exclude works by name."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _reader(source: CalibrationSource, manifest: Manifest) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = calibration_batches(source, manifest)

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            batch = next(self._batches, None)
            return None if batch is None else {manifest.input_name: batch}

    return Reader()


def _derived_metadata(src: Manifest, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata for a derived package: FP32 metrics renamed so nobody mistakes them for its own."""
    meta: dict[str, Any] = {}
    for key, value in src.metadata.items():
        if key == "torch_checkpoint":
            continue
        meta[f"fp32_{key}" if key in _STALE_KEYS else key] = value
    meta["derived_from"] = {"name": src.name, "version": src.version, "precision": src.precision}
    meta.update(extra)
    return meta


def _check_out(package: ModelPackage, out_dir: Path) -> None:
    if out_dir.resolve() == package.root.resolve():
        raise ValueError(f"--out must differ from the source package {str(package.root)!r}")
    if package.manifest.precision != "fp32":
        raise ValueError(
            f"quantize needs an fp32 package; {str(package.root)!r} has precision "
            f"{package.manifest.precision!r}"
        )


@dataclass(frozen=True)
class QuantizeResult:
    package: Path
    float_nodes: int
    quantized_nodes: int


def quantize_int8(
    src_dir: str | Path,
    out_dir: str | Path,
    source: CalibrationSource,
    method: str = "minmax",
    keep_float_tail: bool = True,
    target: str = "cpu",
    float_head: bool = False,
) -> QuantizeResult:
    """Write an INT8 QDQ copy of the fp32 package at `src_dir` to `out_dir`.

    `target="cpu"`: uint8 activations with zero points (what ONNX Runtime's CPU kernels favour);
    `target="tensorrt"`: int8 symmetric activations, the only Q/DQ form TensorRT accepts.
    `float_head=True` also keeps the head's output convs in float (see float_tail_nodes).
    `keep_float_tail=False` quantizes the decode tail too; it exists to measure the pitfall.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"--method must be one of {list(METHODS)}, got {method!r}")
    if target not in QUANT_TARGETS:
        raise ValueError(f"--for must be one of {list(QUANT_TARGETS)}, got {target!r}")
    symmetric = target == "tensorrt"
    package, out = load_package(src_dir), Path(out_dir)
    _check_out(package, out)
    if not source.synthetic:
        calibration_files(source)  # fail before any work if the folder is unusable
    out.mkdir(parents=True, exist_ok=True)
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(package.model_path), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        _name_nodes(model)
        onnx.save(model, str(pre))
        tail = float_tail_nodes(model, float_head) if keep_float_tail else []
        model_out = out / package.manifest.model_file
        quantize_static(
            str(pre), str(model_out), _reader(source, package.manifest),
            quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            calibrate_method=calibrate, nodes_to_exclude=tail,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )  # fmt: skip
    quantized = sum(n.op_type == "DequantizeLinear" for n in onnx.load(str(model_out)).graph.node)
    import onnxruntime

    meta = _derived_metadata(package.manifest, {
        "calibration": source.describe(),
        "quantization": {
            "tool": f"onnxruntime.quantization {onnxruntime.__version__} quantize_static",
            "format": "QDQ", "weights": "int8, per output channel",
            "activations": "int8 symmetric" if symmetric else "uint8 with zero point",
            "target": target, "method": method,
            "float_tail_nodes": len(tail),
            "float_head": float_head,
        },
    })  # fmt: skip
    write_manifest(replace(package.manifest, precision="int8", metadata=meta), out)
    return QuantizeResult(out, len(tail), quantized)


def convert_fp16(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Write an FP16 copy (float32 inputs and outputs kept) for GPU engines."""
    from onnxconverter_common import float16

    package, out = load_package(src_dir), Path(out_dir)
    _check_out(package, out)
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(package.model_path))
    half = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(out / package.manifest.model_file))
    meta = _derived_metadata(package.manifest, {
        "fp16": {"tool": "onnxconverter_common.float16", "keep_io_types": True,
                 "intended_for": "GPU engines (on CPUs FP16 is usually slower)"},
    })  # fmt: skip
    write_manifest(replace(package.manifest, precision="fp16", metadata=meta), out)
    return out
