"""Train the default detector on a lent GPU, with the CPU recipe of `detserve-model train`.

The schedule is sized to a wall-clock budget from a measured step time: `--s-per-step` (on an
H200 with 16 cores, 12000 scenes at batch 32 ran 375 steps in 22 s, about 0.06 s a step,
augmentation-bound). A probe is no substitute: CUDA start-up and cuDNN autotuning make the first
steps cost as much as the next twenty. Writes a slim checkpoint (EMA weights + config, what export
needs), the history and a JSON summary to --out, also when a timeout's SIGTERM cuts the run short
(from the last periodic checkpoint).

    PYTHONPATH=typing_shim python3 benchmarks/gpu_train/train_on_device.py --out $OUT --budget-s 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
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
    ap.add_argument("--s-per-step", type=float, default=0.06, help="measured step time")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, (os.cpu_count() or 2) - 1)
    started = time.monotonic()
    pool = render_pool("train", args.train_scenes, TRAIN_SIZES, 416, None, False, workers)
    val = render_pool("val", args.val_scenes, VAL_SIZES, None, None, False, workers)
    render_s = time.monotonic() - started
    det_cfg = DetectorConfig(len(CLASSES), 1.0, 1.0)
    s_per_step = args.s_per_step
    per_epoch = len(pool) // args.batch_size
    epochs = int(max(1, min(args.max_epochs, args.budget_s / (s_per_step * per_epoch))))
    run_dir = Path(tempfile.mkdtemp(prefix="train-"))
    cfg = TrainConfig(out_dir=str(run_dir), epochs=epochs, batch_size=args.batch_size,
                      lr=args.lr, device=args.device, threads=min(8, workers),
                      eval_every=0, save_every=100)
    print(json.dumps({"render_s": round(render_s, 1), "s_per_step": round(s_per_step, 4),
                      "epochs": epochs, "steps": epochs * per_epoch}), flush=True)
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = train(det_cfg, cfg, pool, val, CLASSES, progress=False)
        steps, final_loss = result.steps, result.final_loss
    except KeyboardInterrupt:
        steps, final_loss = -1, float("nan")  # cut short: keep the last periodic checkpoint
    finally:
        if (run_dir / "last.pt").is_file():
            model, _ = load_checkpoint(run_dir / "last.pt")  # EMA weights, on the CPU
            save_checkpoint(model, det_cfg, out / "model.pt")
        if (run_dir / "history.jsonl").is_file():
            shutil.copy(run_dir / "history.jsonl", out / "history.jsonl")
    train_s = time.monotonic() - t0
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor()
    summary = {"device": args.device, "gpu": gpu, "torch": torch.__version__,
               "train_scenes": len(pool), "val_scenes": len(val), "batch_size": args.batch_size,
               "lr": args.lr, "epochs": epochs, "steps": steps,
               "train_s": round(train_s, 1), "render_s": round(render_s, 1),
               "final_loss": final_loss,
               "command": "benchmarks/gpu_train/train_on_device.py " + " ".join(
                   f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}), flush=True)
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    raise SystemExit(main())
