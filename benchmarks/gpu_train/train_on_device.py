"""Train the default detector on a lent GPU, with the CPU recipe of `detserve-model train`.

The schedule is sized to a wall-clock budget: a short probe measures seconds per step on this
machine, then the real run gets as many epochs as fit. Writes a slim checkpoint (EMA weights +
config, what export needs), the history and a JSON summary to --out.

    PYTHONPATH=typing_shim python3 benchmarks/gpu_train/train_on_device.py --out $OUT --budget-s 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from detserve.models.detector import DetectorConfig, load_checkpoint, save_checkpoint
from detserve.models.scenes import CLASSES, TRAIN_SIZES, VAL_SIZES
from detserve.models.train import TrainConfig, train
from detserve.models.train_data import render_pool


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=200.0, help="wall time for the real run")
    ap.add_argument("--train-scenes", type=int, default=10000)
    ap.add_argument("--val-scenes", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, (os.cpu_count() or 2) - 1)
    started = time.monotonic()
    pool = render_pool("train", args.train_scenes, TRAIN_SIZES, 416, None, False, workers)
    val = render_pool("val", args.val_scenes, VAL_SIZES, None, None, False, workers)
    render_s = time.monotonic() - started
    det_cfg = DetectorConfig(len(CLASSES), 1.0, 1.0)
    base = TrainConfig(out_dir="", batch_size=args.batch_size, lr=args.lr, device=args.device,
                       threads=min(8, workers), eval_every=0, save_every=10**9)
    s_per_step = _probe(det_cfg, base, pool)
    per_epoch = len(pool) // args.batch_size
    epochs = int(max(1, min(args.max_epochs, args.budget_s / (s_per_step * per_epoch))))
    run_dir = Path(tempfile.mkdtemp(prefix="train-"))
    cfg = TrainConfig(out_dir=str(run_dir), epochs=epochs, batch_size=args.batch_size,
                      lr=args.lr, device=args.device, threads=min(8, workers),
                      eval_every=max(1, epochs // 4), save_every=500)
    print(json.dumps({"render_s": round(render_s, 1), "s_per_step": round(s_per_step, 4),
                      "epochs": epochs, "steps": epochs * per_epoch}), flush=True)
    t0 = time.monotonic()
    result = train(det_cfg, cfg, pool, val, CLASSES, progress=False)
    train_s = time.monotonic() - t0
    model, _ = load_checkpoint(result.checkpoint)  # EMA weights, on the CPU
    save_checkpoint(model, det_cfg, out / "model.pt")
    shutil.copy(run_dir / "history.jsonl", out / "history.jsonl")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor()
    summary = {"device": args.device, "gpu": gpu, "torch": torch.__version__,
               "train_scenes": len(pool), "val_scenes": len(val), "batch_size": args.batch_size,
               "lr": args.lr, "epochs": epochs, "steps": result.steps,
               "train_s": round(train_s, 1), "render_s": round(render_s, 1),
               "final_loss": result.final_loss, "history": result.metrics,
               "command": "benchmarks/gpu_train/train_on_device.py " + " ".join(
                   f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}), flush=True)
    return 0


def _probe(det_cfg: DetectorConfig, base: TrainConfig, pool: list) -> float:  # type: ignore[type-arg]
    """Seconds per training step here: the time of steps 6..25, start-up excluded."""
    times = []
    for steps in (5, 25):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(**{**base.__dict__, "out_dir": tmp, "max_steps": steps})
            t0 = time.monotonic()
            train(det_cfg, cfg, pool, [], CLASSES, progress=False, log=lambda _: None)
            times.append(time.monotonic() - t0)
    return max(1e-3, (times[1] - times[0]) / 20)


if __name__ == "__main__":
    raise SystemExit(main())
