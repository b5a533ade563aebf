"""`detserve-model train | export | package`: the trainer's subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detserve.models.detector import DetectorConfig
    from detserve.models.distill import Distiller

DEFAULT_OUT = "data/train/shapes"
DEFAULT_CACHE = "data/cache"


def register(subparsers: Any) -> None:
    _register_train(subparsers)
    _register_package(subparsers)
    _register_card(subparsers)


def _register_train(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train the demo detector on synthetic scenes")
    p.add_argument("--out-dir", default=DEFAULT_OUT, help="checkpoints and history.jsonl")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--input-size", type=int, default=320)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--depth-mult", type=float, default=1.0)
    p.add_argument("--train-scenes", type=int, default=6000, help="size of the rendered pool")
    p.add_argument("--val-scenes", type=int, default=300, help="val scenes for per-epoch mAP")
    p.add_argument("--max-side", type=int, default=416,
                   help="pool scenes are downscaled so their longer side is at most this")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=300, help="linear LR warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that render the scene pools (scenes depend only on seeds)")
    p.add_argument("--save-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between val evaluations")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help="rendered scene pools")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    p.add_argument("--no-progress", action="store_true")
    d = p.add_argument_group("distillation (models/distill.py)")
    d.add_argument("--teacher", default=None, metavar="PACKAGE_OR_CHECKPOINT",
                   help="also learn this detserve-trained model's class scores and box "
                        "distributions (a package folder with model.pt, or a checkpoint)")
    d.add_argument("--distill-weight", type=float, default=1.0,
                   help="weight of the class-score distillation term")
    d.add_argument("--distill-box-weight", type=float, default=1.0,
                   help="weight of the box-distribution (DFL) distillation term")
    d.add_argument("--distill-temperature", type=float, default=1.0,
                   help="softening temperature of both terms")
    p.set_defaults(func=_train)


def _distiller(args: argparse.Namespace, student: DetectorConfig) -> Distiller | None:
    """The --teacher's Distiller (None without --teacher); one-line errors before any rendering."""
    if args.teacher is None:
        return None
    from detserve.models.distill import DistillConfig, make_distiller

    try:
        cfg = DistillConfig(args.distill_weight, args.distill_box_weight,
                            args.distill_temperature)
        distiller = make_distiller(args.teacher, cfg, args.device)
        distiller.prepare(student, args.device)
    except ValueError as exc:
        raise SystemExit(f"detserve-model train: error: --teacher: {exc}") from None
    return distiller


def _train(args: argparse.Namespace) -> int:
    from detserve.models.detector import DetectorConfig, build_detector, count_parameters
    from detserve.models.scenes import CLASSES, TRAIN_SIZES, VAL_SIZES
    from detserve.models.train import TrainConfig, train
    from detserve.models.train_data import render_pool

    det_cfg = DetectorConfig(len(CLASSES), args.width_mult, args.depth_mult)
    cfg = TrainConfig(out_dir=args.out_dir, epochs=args.epochs, batch_size=args.batch_size,
                      input_size=args.input_size, lr=args.lr, seed=args.seed,
                      warmup_steps=args.warmup_steps,
                      threads=args.threads, device=args.device, save_every=args.save_every,
                      eval_every=args.eval_every)
    resume = Path(args.out_dir) / "last.pt" if args.resume else None
    if resume is not None and not resume.is_file():
        raise SystemExit(f"--resume: no checkpoint at {str(resume)!r}")
    distiller = _distiller(args, det_cfg)
    cache = Path(args.cache_dir)
    progress = not args.no_progress
    pool = render_pool("train", args.train_scenes, TRAIN_SIZES, args.max_side, cache, progress,
                       args.workers)
    val = render_pool("val", args.val_scenes, VAL_SIZES, None, cache, progress, args.workers)
    print(json.dumps({"detector": det_cfg.__dict__,
                      "parameters": count_parameters(build_detector(det_cfg)),
                      "train_scenes": len(pool), "val_scenes": len(val),
                      "train_seeds": f"split_seeds('train', {args.train_scenes})",
                      "val_seeds": f"split_seeds('val', {args.val_scenes})",
                      **({} if distiller is None else {"teacher": distiller.describe()})}),
          flush=True)
    result = train(det_cfg, cfg, pool, val, CLASSES, resume=resume, progress=progress,
                   distill=distiller)
    print(json.dumps({"steps": result.steps, "final_loss": result.final_loss,
                      "checkpoint": str(result.checkpoint)}))
    return 0


def _register_package(subparsers: Any) -> None:
    p = subparsers.add_parser("package", help="export a checkpoint as a model package "
                              "(ONNX with parity check, manifest, float16 model.pt)")
    p.add_argument("checkpoint", help="training checkpoint (e.g. data/train/shapes/last.pt)")
    p.add_argument("--out", required=True, help="package folder to write")
    p.add_argument("--input-size", type=int, default=320)
    p.add_argument("--name", default="shapes")
    p.add_argument("--version", default="1")
    p.add_argument("--iou-threshold", type=float, default=0.6, help="NMS IoU")
    p.add_argument("--multi-label", action="store_true",
                   help="host NMS scores every (anchor, class) pair, as EfficientNMS does")
    p.add_argument("--train-command", required=True, help="the command that trained it")
    p.add_argument("--data", required=True, help="the training/val data, in words and seeds")
    p.set_defaults(func=_package)


def _package(args: argparse.Namespace) -> int:
    from detserve.models.package import TrainingFacts, machine_description, write_package
    from detserve.models.scenes import CLASSES

    facts = TrainingFacts(args.train_command, args.data, machine_description())
    result = write_package(args.checkpoint, args.out, args.input_size, CLASSES, facts,
                           args.name, args.version, args.iou_threshold,
                           multi_label=args.multi_label)
    print(f"wrote {result.root} ({result.parameters} parameters); {result.parity}")
    return 0


def _register_card(subparsers: Any) -> None:
    p = subparsers.add_parser("card", help="write MODEL_CARD.md from the manifest and eval "
                              "reports")
    p.add_argument("package", help="model package folder")
    p.add_argument("--report", action="append", required=True, metavar="EVAL_JSON",
                   help="eval.json from `detserve-model eval --out` (repeat for each input)")
    p.add_argument("--note", action="append", default=[], help="extra paragraph for the card")
    p.set_defaults(func=_card)


def _card(args: argparse.Namespace) -> int:
    from detserve.models.card import read_reports, write_model_card

    print(f"wrote {write_model_card(args.package, read_reports(args.report), args.note)}")
    return 0
