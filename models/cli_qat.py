"""`detserve-model quantize-qat`: INT8 by quantization-aware fine-tuning (see models/qat.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from detserve.engines.manifest import ManifestError
from detserve.models.extras import explain

DEFAULT_WORK = "runs/qat"
DEFAULT_CACHE = "data/cache"


def register(subparsers: Any) -> None:
    from detserve.models.qat_config import QatConfig

    d = QatConfig()
    p = subparsers.add_parser(
        "quantize-qat",
        help="INT8 by quantization-aware training: NNCF fake-quant fine-tune of the package's "
        "torch weights, written as ONNX Runtime QDQ or OpenVINO INT8 IR",
        description="Fine-tune an fp32 package's PyTorch weights with NNCF fake-quant on "
        "train-split scenes (never val or test), then write an int8 package. The fine-tune is "
        "checkpointed in --work-dir; a finished one with the same settings is reused, so the "
        "second engine's package costs only the export.",
    )
    p.add_argument("package", help="fp32 model package directory with its model.pt")
    p.add_argument("--engine", required=True, choices=["onnxruntime", "openvino"],
                   help="onnxruntime: QDQ ONNX; openvino: IR with FakeQuantize")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="new package dir (default: PACKAGE_qat_ENGINE)")  # fmt: skip
    p.add_argument("--steps", type=int, default=d.steps, help=f"fine-tune steps ({d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW lr ({d.lr:g})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-scenes", type=int, default=d.train_scenes,
                   help="train-split scenes in the pool (split_seeds('train', N))")  # fmt: skip
    p.add_argument("--preset", default=d.preset, choices=["mixed", "performance"])
    p.add_argument("--calib", default="synthetic",
                   help="range initialisation images: 'synthetic' (calib-split scenes) or a "
                        "folder of images disjoint from val")  # fmt: skip
    p.add_argument("--n", type=int, default=200, help="calibration images (200)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch threads (1 leaves the other core to other jobs)")  # fmt: skip
    p.add_argument("--work-dir", default=None,
                   help=f"fine-tune checkpoint folder (default {DEFAULT_WORK}/PACKAGE-NAME)")
    p.add_argument("--resume", action="store_true", help="continue WORK_DIR/qat_last.pt")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this step (checkpoint kept, no package written); the "
                        "schedule still spans --steps")  # fmt: skip
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help="rendered scene pools")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_quantize_qat)


def _folder(package: str) -> Path:
    src = Path(package)
    return src.parent if src.name == "manifest.yaml" else src


def _quantize_qat(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ManifestError, ValueError, FileNotFoundError) as exc:
        print(f"error: {explain(exc)}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from detserve.models.qat import finetune, source_package
    from detserve.models.qat_config import QatConfig
    from detserve.models.qat_export import write_qat_package
    from detserve.models.quantize import CalibrationSource

    src = _folder(args.package)
    out = Path(args.out) if args.out else src.parent / f"{src.name}_qat_{args.engine}"
    source_package(src, out)  # fail on a wrong package or --out before any work
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    cfg = QatConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    warmup_steps=args.warmup_steps, seed=args.seed,
                    train_scenes=args.train_scenes, preset=args.preset, threads=args.threads,
                    save_every=args.save_every)  # fmt: skip
    work = Path(args.work_dir) if args.work_dir else Path(DEFAULT_WORK) / src.name
    progress = not args.no_progress
    with contextlib.redirect_stdout(sys.stderr):  # stdout keeps the one JSON result line
        run = finetune(src, cfg, CalibrationSource(args.calib, args.n), work, args.resume,
                       args.max_steps, Path(args.cache_dir), progress)  # fmt: skip
        if run.steps < cfg.steps:
            print(f"stopped at step {run.steps} of {cfg.steps}; continue with --resume")
            result = None
        else:
            result = write_qat_package(run, out, args.engine)
    line: dict[str, Any] = {"checkpoint": str(run.checkpoint), "steps": run.steps,
                            "reused_fine_tune": run.reused}  # fmt: skip
    if result is not None:
        line.update({"package": str(result.package), "precision": "int8",
                     "engine": result.engine, "quantize_ops": result.quantize_ops})  # fmt: skip
    print(json.dumps(line))
    return 0
