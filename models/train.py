"""Training loop for the demo detector: AdamW, warmup + cosine LR, weight EMA, resumable.

Determinism and resuming: the model is initialised from `seed`; epoch e shuffles the pool and
augments with generators seeded by (seed, e), so a run resumed from a checkpoint at step s draws
exactly the batches an uninterrupted run would have drawn after step s. `last.pt` is written every
`save_every` steps and at each epoch end; its "model" entry holds the EMA weights (what gets
exported), and "train_state" holds what resuming needs.
"""

from __future__ import annotations

import copy
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from detserve.models.detector import Detector, DetectorConfig, build_detector, save_checkpoint
from detserve.models.loss import DetectionLoss, Targets
from detserve.models.train_data import AugmentConfig, Batch, Sample, make_batch
from detserve.models.train_eval import QuickMetrics, evaluate_model

if TYPE_CHECKING:
    from detserve.models.distill import Distiller


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str
    epochs: int = 20
    batch_size: int = 16
    input_size: int = 320
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 300
    final_lr_frac: float = 0.05
    ema_decay: float = 0.999
    ema_ramp: float = 300.0
    seed: int = 0
    save_every: int = 200
    eval_every: int = 1  # epochs; 0 disables
    threads: int = 2
    # "cpu", or "cuda" where a GPU is lent: the same recipe, only faster (see MODEL_CARD.md).
    device: str = "cpu"
    grad_clip: float = 10.0
    # Stop early (checkpoint saved) without changing the LR schedule, which spans `epochs`.
    max_steps: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "save_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    losses: list[float]
    metrics: list[dict[str, Any]]
    checkpoint: Path


class ModelEma:
    """Exponential moving average of the weights, with a ramp so early averages are not stale."""

    def __init__(self, model: Detector, decay: float, ramp: float, updates: int = 0) -> None:
        device = next(model.parameters()).device
        self.module = build_detector(model.cfg).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module.load_state_dict(model.state_dict())
        self.module.eval().requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                value.copy_(current[name])


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * t))
    return cfg.lr * (cfg.final_lr_frac + (1 - cfg.final_lr_frac) * cosine)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases: decaying them only fights the normalisation.
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr,
                             betas=(0.9, 0.999))


@dataclass
class _State:
    model: Detector
    ema: ModelEma
    optimizer: torch.optim.Optimizer
    step: int
    history: list[dict[str, Any]]


def _init_state(det_cfg: DetectorConfig, cfg: TrainConfig, resume: Path | None) -> _State:
    torch.manual_seed(cfg.seed)
    # On the device before the optimizer exists, so its state lives there too.
    model = build_detector(det_cfg).to(cfg.device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.train()
    optimizer = make_optimizer(model, cfg)
    if resume is None:
        return _State(model, ModelEma(model, cfg.ema_decay, cfg.ema_ramp), optimizer, 0, [])
    payload = torch.load(resume, map_location="cpu", weights_only=True)
    if "train_state" not in payload:
        raise ValueError(f"checkpoint {str(resume)!r} holds no training state to resume from")
    saved_cfg = DetectorConfig(**payload["config"])
    if saved_cfg != det_cfg:
        raise ValueError(f"checkpoint {str(resume)!r} is for {saved_cfg}, not {det_cfg}")
    ts = payload["train_state"]
    model.load_state_dict(ts["model"])
    optimizer.load_state_dict(ts["optimizer"])
    ema = ModelEma(model, cfg.ema_decay, cfg.ema_ramp, int(ts["ema_updates"]))
    ema.module.load_state_dict(payload["model"])
    return _State(model, ema, optimizer, int(ts["step"]), json.loads(ts["history"]))


def _save(state: _State, cfg: TrainConfig, path: Path) -> Path:
    train_state = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                   "step": state.step, "ema_updates": state.ema.updates,
                   "history": json.dumps(state.history),
                   "train_config": json.dumps(asdict(cfg))}
    return save_checkpoint(state.ema.module, state.model.cfg, path, {"train_state": train_state})


def _prefetch(items: Iterable[Batch], ahead: int) -> Iterator[Batch]:
    """Yield `items` in order while one background thread builds up to `ahead` of them.

    Augmentation runs on the CPU (cv2 releases the GIL), so on a GPU it overlaps the training
    step instead of stalling it. One producer keeps the random draws in their sequential order,
    so batches are identical with or without prefetching. `ahead=0` builds them inline.
    """
    if ahead <= 0:
        yield from items
        return
    done = object()
    slots: queue.Queue[Any] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(item)
            slots.put(done)
        except BaseException as exc:  # surfaced in the consumer, never lost in the thread
            slots.put(exc)

    worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    worker.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def _epoch_order(cfg: TrainConfig, epoch: int, n: int) -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng([cfg.seed, epoch])
    return rng.permutation(n), np.random.default_rng([cfg.seed, epoch, 1])


def train(det_cfg: DetectorConfig, cfg: TrainConfig, pool: list[Sample], val: list[Sample],
          class_names: tuple[str, ...], resume: Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, distill: Distiller | None = None) -> TrainResult:
    """Train on `pool`, evaluating on `val` each `eval_every` epochs; returns losses/metrics.
    With `distill`, the loss adds its teacher terms (models/distill.py) to the labels' loss."""
    if len(pool) < cfg.batch_size:
        raise ValueError(f"pool has {len(pool)} scenes, fewer than batch_size {cfg.batch_size}")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _init_state(det_cfg, cfg, resume)
    if distill is not None:
        distill.prepare(det_cfg, cfg.device)
    aug = replace(cfg.augment, size=cfg.input_size)
    loss_fn = DetectionLoss(state.model)
    per_epoch = len(pool) // cfg.batch_size
    total = per_epoch * cfg.epochs
    losses: list[float] = []
    last = out / "last.pt"
    bar = tqdm(total=total, initial=state.step, disable=not progress, desc="train")
    started = time.monotonic()
    stop = total if cfg.max_steps is None else min(total, cfg.max_steps)
    while state.step < stop:
        epoch, index = divmod(state.step, per_epoch)
        order, rng = _epoch_order(cfg, epoch, len(pool))
        # Replay this epoch's augmentation draws up to `index` so a resume is exact.
        for skip in range(index):
            make_batch([pool[i] for i in order[skip * cfg.batch_size:(skip + 1) * cfg.batch_size]],
                       aug, rng)
        batches = (make_batch([pool[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]],
                              aug, rng) for b in range(index, per_epoch))
        for batch in _prefetch(batches, ahead=4 if cfg.device != "cpu" else 0):
            lr = lr_at(state.step, total, cfg)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            images = batch.images.to(cfg.device, non_blocking=True)
            targets = Targets.from_lists(batch.boxes, batch.classes).to(cfg.device)
            raw = state.model.raw(images)
            parts = loss_fn(raw, targets)
            objective = parts.total
            if distill is not None:
                objective = objective + distill(state.model, raw, images).total
            state.optimizer.zero_grad(set_to_none=True)
            objective.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
            state.optimizer.step()
            state.ema.update(state.model)
            state.step += 1
            losses.append(float(objective.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", box=f"{parts.box:.3f}",
                            cls=f"{parts.cls:.3f}", dfl=f"{parts.dfl:.3f}", lr=f"{lr:.1e}",
                            **({} if distill is None else distill.recent(1)))
            if state.step % cfg.save_every == 0:
                _save(state, cfg, last)
            if state.step >= stop:
                break
        if state.step % per_epoch:
            _save(state, cfg, last)
            break
        _end_epoch(state, cfg, epoch, losses[-per_epoch:] or [math.nan], val, class_names,
                   started, log, {} if distill is None else distill.recent(per_epoch))
        _save(state, cfg, last)
    bar.close()
    return TrainResult(state.step, losses[-1] if losses else math.nan, losses, state.history,
                       last)


def _end_epoch(state: _State, cfg: TrainConfig, epoch: int, epoch_losses: list[float],
               val: list[Sample], class_names: tuple[str, ...], started: float,
               log: Callable[[str], None], extra: dict[str, Any]) -> None:
    record: dict[str, Any] = {"epoch": epoch + 1, "step": state.step,
                              "loss": float(np.mean(epoch_losses)),
                              "minutes": round((time.monotonic() - started) / 60, 2), **extra}
    if val and cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
        # The quick evaluator works on CPU tensors; evaluate a CPU copy of the EMA weights.
        ema_cpu = copy.deepcopy(state.ema.module).cpu()
        metrics: QuickMetrics = evaluate_model(ema_cpu, val, class_names, cfg.input_size)
        record.update({k: round(v, 4) for k, v in metrics.as_dict().items()})
    state.history.append(record)
    log(json.dumps(record))
    with (Path(cfg.out_dir) / "history.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")
