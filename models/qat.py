"""Quantization-aware training (QAT): an NNCF fake-quant fine-tune of a package's PyTorch weights.

The recipe, against the post-training (PTQ) paths of `detserve.models.quantize` and
`detserve.models.quantize_openvino`:

1. The package's torch checkpoint (`model.pt`, float16 weights) is loaded in float32 with every
   BatchNorm folded into its convolution: the graph the fp32 package's ONNX holds, so before any
   step the model is the fp32 package.
2. `nncf.quantize` (torch backend) inserts fake-quantize ops and sets their ranges from the
   calibration scenes (the "calib" split, the PTQ paths' rule), preset mixed as in the served
   OpenVINO PTQ package: int8 symmetric per-channel weights, asymmetric per-tensor activations.
   The decode tail (DFL softmax and its fixed conv, anchor arithmetic, sigmoid, final concat) and
   the six predictor convs stay float, as in that package.
3. Weights and quantizer ranges are fine-tuned together with the fake-quant in the forward pass
   (straight-through gradients), on train-split scene pools (`render_pool("train", ...)`, never
   val or test) through train's augmentation and loss: AdamW, linear warmup then cosine to 0.
4. `detserve.models.qat_export` writes the result as an ONNX Runtime QDQ package or an OpenVINO
   INT8 IR package.

Batch b at step s is drawn from generators seeded by (seed, epoch) and (seed, s), so a run resumed
from `qat_last.pt` draws the very batches an uninterrupted run would have drawn.

NNCF kernels: NNCF compiles a C++ extension for fake-quant on first use; on this 2-core machine the
build outran NNCF's 60 s load timeout, and it would be rebuilt on every new machine. NNCF's
reference kernels are torch-native ops computing the same function, so they are installed instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detserve.engines.manifest import ModelPackage, load_package
from detserve.models.detector import Detector, load_checkpoint
from detserve.models.export import quiet_logger
from detserve.models.qat_config import QatConfig
from detserve.models.quantize import CalibrationSource, _check_out, calibration_batches

CHECKPOINT = "qat_last.pt"
# NNCF graph node names (torch backend): ops outside any module are the decode tail ("/softmax/0",
# "/sigmoid/0", ...), plus the DFL's fixed conv and each head branch's last conv (the predictors).
FLOAT_PATTERNS = (r"^/.*", r"^det/dfl/.*", r"^det/head/2/conv2d/\d+$")


class QatModule(nn.Module):
    """The detector with a switch: `emit_raw` returns the per-level head outputs (for the loss)
    instead of the decoded `[B, 4 + nc, N]`. The quantized ops all sit before the decode, so both
    paths run the same fake-quant."""

    def __init__(self, det: Detector) -> None:
        super().__init__()
        self.det = det
        self.emit_raw = False

    def forward(self, x: Tensor) -> Any:
        raw = self.det.raw(x)
        return raw if self.emit_raw else self.det.decode(raw)


@dataclass
class QatRun:
    model: QatModule  # NNCF-wrapped, eval mode, decoded outputs
    package: ModelPackage  # the fp32 source
    config: QatConfig
    calibration: dict[str, Any]
    steps: int
    losses: list[float]
    seconds: float  # fine-tune loop wall time, summed over resumed chunks
    reused: bool  # a finished fine-tune of the same settings was loaded, not run
    checkpoint: Path | None


def use_reference_kernels() -> None:
    """Make NNCF's CPU fake-quant use its torch-native kernels (see the module docstring)."""
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import torch_executor

    # The eager functions, not NNCF's torch.compile wrappers of them: compiling recompiles per
    # tensor shape (dozens of quantizers) until dynamo's limit, which costs minutes on 2 cores.
    extensions.QuantizedFunctionsCPU._loaded_namespace = SimpleNamespace(
        Quantize_forward=torch_executor.forward, Quantize_backward=torch_executor.backward)


def source_package(src_dir: str | Path, out_dir: str | Path | None = None) -> ModelPackage:
    """The fp32 package to fine-tune (checked: fp32, has its torch checkpoint, differs from out)."""
    package = load_package(src_dir)
    if out_dir is not None:
        _check_out(package, Path(out_dir))
    elif package.manifest.precision != "fp32":
        raise ValueError(f"QAT needs an fp32 package; {str(package.root)!r} has precision "
                         f"{package.manifest.precision!r}")  # fmt: skip
    if not _checkpoint_path(package).is_file():
        raise ValueError(f"package {str(package.root)!r} has no torch checkpoint "
                         "(metadata.torch_checkpoint, e.g. model.pt): QAT fine-tunes the PyTorch "
                         "weights")  # fmt: skip
    return package


def _checkpoint_path(package: ModelPackage) -> Path:
    return package.root / str(package.manifest.metadata.get("torch_checkpoint", "model.pt"))


def _fused(package: ModelPackage) -> QatModule:
    det, _ = load_checkpoint(_checkpoint_path(package))
    return QatModule(det.float().eval().fuse())


def quantize_torch(package: ModelPackage, source: CalibrationSource, preset: str) -> QatModule:
    """Step 0: the fused model with NNCF fake-quant, ranges from the calibration images."""
    import nncf

    use_reference_kernels()
    images = [torch.from_numpy(b) for b in calibration_batches(source, package.manifest, 1)]
    nncf_preset = {"mixed": nncf.QuantizationPreset.MIXED,
                   "performance": nncf.QuantizationPreset.PERFORMANCE}[preset]  # fmt: skip
    # NNCF draws progress bars on stdout (callers keep stdout for their one result line) and
    # logs a line per op it leaves unquantized.
    with contextlib.redirect_stdout(sys.stderr), quiet_logger("nncf", logging.WARNING):
        model = nncf.quantize(
            _fused(package), nncf.Dataset(images), subset_size=len(images), preset=nncf_preset,
            ignored_scope=nncf.IgnoredScope(patterns=list(FLOAT_PATTERNS), validate=False),
        )  # fmt: skip
    return model.eval()  # type: ignore[no-any-return]


def lr_at(step: int, cfg: QatConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def step_indices(cfg: QatConfig, step: int) -> np.ndarray:
    """Pool indices of the batch at `step`: epoch-wise permutations seeded by (seed, epoch)."""
    per_epoch = cfg.train_scenes // cfg.batch_size
    epoch, b = divmod(step, per_epoch)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(cfg.train_scenes)
    return order[b * cfg.batch_size:(b + 1) * cfg.batch_size]


def _source_id(package: ModelPackage) -> dict[str, str]:
    digest = hashlib.sha256(_checkpoint_path(package).read_bytes()).hexdigest()[:16]
    return {"package": str(package.root.resolve()), "model_pt_sha256": digest}


def _check_checkpoint(ck: dict[str, Any], cfg: QatConfig, calib: dict[str, Any],
                      package: ModelPackage, path: Path) -> None:  # fmt: skip
    mine = {"settings": cfg.settings(), "calibration": calib, "source": _source_id(package)}
    for key, want in mine.items():
        if ck.get(key) != want:
            raise ValueError(f"{str(path)!r} holds a fine-tune with other {key} "
                             f"({ck.get(key)} against {want}); use another --work-dir")  # fmt: skip


def finetune(src_dir: str | Path, cfg: QatConfig, source: CalibrationSource,
             work_dir: str | Path, resume: bool = False, max_steps: int | None = None,
             cache_dir: Path | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> QatRun:  # fmt: skip
    """Fine-tune the package at `src_dir` with fake-quant, checkpointing to WORK/qat_last.pt.

    A finished fine-tune of the same settings in `work_dir` is loaded, not rerun; an unfinished
    one needs `resume`. `max_steps` stops early (checkpoint saved; the schedule spans `steps`).
    """
    package = source_package(src_dir)
    torch.set_num_threads(cfg.threads)
    use_reference_kernels()
    calib = source.describe()
    path = Path(work_dir) / CHECKPOINT
    ck = _load(path) if path.is_file() else None
    if ck is not None:
        _check_checkpoint(ck, cfg, calib, package, path)
        if int(ck["step"]) < cfg.steps and not resume:
            raise ValueError(f"{str(path)!r} holds an unfinished fine-tune (step {ck['step']} of "
                             f"{cfg.steps}); pass --resume to continue it or use another "
                             "--work-dir")  # fmt: skip
    elif resume:
        raise ValueError(f"--resume: no checkpoint at {str(path)!r}")
    model = _restore(package, ck) if ck is not None else quantize_torch(package, source,
                                                                         cfg.preset)
    run = QatRun(model, package, cfg, calib, 0 if ck is None else int(ck["step"]),
                 [] if ck is None else list(ck["losses"]),
                 0.0 if ck is None else float(ck["seconds"]), False, None)  # fmt: skip
    if run.steps >= cfg.steps:
        run.reused, run.checkpoint = True, path
        return run
    stop = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    if ck is not None:
        optimizer.load_state_dict(ck["optimizer"])
    _train_loop(run, optimizer, stop, path, cache_dir, progress, log)
    run.checkpoint = path
    return run


def _load(path: Path) -> dict[str, Any]:
    # NNCF's transformation config is plain Python objects, not tensors; this is our own file.
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or "nncf_config" not in payload:
        raise ValueError(f"{str(path)!r} is not a QAT checkpoint")
    return payload


def _restore(package: ModelPackage, ck: dict[str, Any]) -> QatModule:
    from nncf.torch import load_from_config

    model = load_from_config(_fused(package), ck["nncf_config"])
    model.load_state_dict(ck["state"])
    return model.eval()  # type: ignore[no-any-return]


def _batches(run: QatRun, start: int, stop: int, cache_dir: Path | None,
             progress: bool) -> Iterator[tuple[int, Any]]:  # fmt: skip
    from detserve.models.scenes import TRAIN_SIZES
    from detserve.models.train_data import AugmentConfig, make_batch, render_pool

    cfg = run.config
    pool = render_pool("train", cfg.train_scenes, TRAIN_SIZES, cfg.max_side, cache_dir, progress)
    aug = AugmentConfig(size=run.package.manifest.input_width)
    for step in range(start, stop):
        rng = np.random.default_rng([cfg.seed, step, 1])
        yield step, make_batch([pool[i] for i in step_indices(cfg, step)], aug, rng)


def _train_loop(run: QatRun, optimizer: torch.optim.Optimizer, stop: int, path: Path,
                cache_dir: Path | None, progress: bool, log: Callable[[str], None]) -> None:
    from tqdm import tqdm

    from detserve.models.loss import DetectionLoss, Targets

    torch.manual_seed(run.config.seed)
    model, cfg = run.model, run.config
    loss_fn = DetectionLoss(model.det)
    bar = tqdm(total=cfg.steps, initial=run.steps, disable=not progress, desc="qat")
    model.train()
    model.emit_raw = True
    started = time.monotonic()
    try:
        for step, batch in _batches(run, run.steps, stop, cache_dir, progress):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            parts = loss_fn(model(batch.images), Targets.from_lists(batch.boxes, batch.classes))
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            run.steps = step + 1
            run.losses.append(float(parts.total.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{run.losses[-1]:.3f}")
            if run.steps % cfg.save_every == 0 or run.steps == stop:
                run.seconds += time.monotonic() - started
                started = time.monotonic()
                _save(run, optimizer, path)
    finally:
        bar.close()
        model.eval()
        model.emit_raw = False
    log(f"qat: step {run.steps} of {cfg.steps}, loss {run.losses[-1]:.4f}, "
        f"{run.seconds:.0f} s of fine-tune loop; checkpoint {path}")  # fmt: skip


def _save(run: QatRun, optimizer: torch.optim.Optimizer, path: Path) -> None:
    from nncf.torch import get_config

    was_raw = run.model.emit_raw
    run.model.emit_raw = False  # the saved config describes the deployed (decoded) graph
    payload = {"nncf_config": get_config(run.model), "state": run.model.state_dict(),
               "optimizer": optimizer.state_dict(), "step": run.steps, "losses": run.losses,
               "seconds": run.seconds, "settings": run.config.settings(),
               "calibration": run.calibration, "source": _source_id(run.package)}  # fmt: skip
    run.model.emit_raw = was_raw
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a torn checkpoint
