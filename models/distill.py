"""Knowledge distillation for `detserve-model train --teacher`: a student learns the labels (the
usual DetectionLoss) plus a frozen teacher's per-anchor outputs.

Teacher and student see the same augmented batch at the same input size and strides, so their
anchors match one to one and no matching is needed. Two terms, each scaled by T² (Hinton et
al.) so their gradients keep their size when the temperature T changes:

- class: the Bernoulli KL from sigmoid(teacher / T) to sigmoid(student / T) for every (anchor,
  class) pair, summed and divided by the teacher's summed scores, as DetectionLoss divides its
  BCE by the summed soft targets (so the scale does not depend on how many objects a batch has);
- box: the KL between the teacher's and the student's DFL bin distributions (softmax at T) per
  side, averaged over the four sides and weighted per anchor by the teacher's highest class
  score: a background cell's box distribution was never trained, so it carries no knowledge.

The teacher runs in eval mode, float32, BatchNorm folded, without gradients.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from detserve.models.detector import Detector, DetectorConfig, load_checkpoint

DEFAULT_CHECKPOINT_FILE = "model.pt"


class TeacherError(ValueError):
    """The --teacher source cannot serve as a teacher (missing, not a detector, mismatched)."""


@dataclass(frozen=True)
class DistillConfig:
    cls_weight: float = 1.0
    box_weight: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        for name in ("cls_weight", "box_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cls_weight == 0 and self.box_weight == 0:
            raise ValueError("cls_weight and box_weight are both 0: nothing to distill")
        if not 0 < self.temperature <= 100:
            raise ValueError(f"temperature must be in (0, 100], got {self.temperature}")


@dataclass(frozen=True)
class DistillParts:
    total: Tensor
    cls: float
    box: float


def _checkpoint_in(source: Path) -> Path:
    """The torch checkpoint a --teacher path names: the file itself, or a package's model.pt."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise TeacherError(f"no package or checkpoint at {str(source)!r}")
    name = DEFAULT_CHECKPOINT_FILE
    if (source / "manifest.yaml").is_file():
        from detserve.engines.manifest import ManifestError, load_package

        try:
            meta = load_package(source).manifest.metadata
        except ManifestError as exc:
            raise TeacherError(f"package {str(source)!r}: {exc}") from exc
        name = str(meta.get("torch_checkpoint", name))
    path = source / name
    if not path.is_file():
        raise TeacherError(f"package {str(source)!r} has no torch checkpoint ({name}); a "
                           f"teacher must be a detserve-trained package or checkpoint")
    return path


def load_teacher(source: str | Path, device: str = "cpu") -> Detector:
    """The teacher in eval mode, float32 (a package's float16 model.pt is widened), BatchNorm
    folded, gradients off. `source`: a package folder or a checkpoint file (e.g. last.pt,
    whose "model" entry holds the EMA weights)."""
    path = _checkpoint_in(Path(source))
    try:
        model, _ = load_checkpoint(path)
    except (RuntimeError, ValueError, OSError, KeyError, TypeError,
            pickle.UnpicklingError) as exc:
        # torch.load's own errors (a zip that is not a checkpoint, ...) are long; keep one line.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TeacherError(f"{str(path)!r} is not a detserve detector checkpoint: {first}"
                           ) from exc
    model = model.float().fuse().eval().requires_grad_(False)
    return model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]


def _bernoulli_kl(student: Tensor, teacher: Tensor, t: float) -> Tensor:
    """KL(sigmoid(teacher/t) || sigmoid(student/t)) elementwise, from logits: BCE minus the
    teacher's own entropy, both computed stably by binary_cross_entropy_with_logits."""
    p = (teacher / t).sigmoid()
    cross = F.binary_cross_entropy_with_logits(student / t, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher / t, p, reduction="none")
    return cross - entropy


def distill_loss(student: Detector, student_raw: list[Tensor], teacher_raw: list[Tensor],
                 cfg: DistillConfig) -> DistillParts:
    """The two distillation terms for one batch (see the module docstring)."""
    s_box, s_cls = student.flatten(student_raw)  # [B, N, 4, r], [B, N, nc]
    t_box, t_cls = student.flatten([t.detach() for t in teacher_raw])
    if s_box.shape != t_box.shape or s_cls.shape != t_cls.shape:
        raise ValueError(f"student outputs {tuple(s_box.shape)} + {tuple(s_cls.shape)} do not "
                         f"match the teacher's {tuple(t_box.shape)} + {tuple(t_cls.shape)}")
    t, scale = cfg.temperature, cfg.temperature**2
    t_scores = t_cls.sigmoid()
    loss_cls = _bernoulli_kl(s_cls, t_cls, t).sum() / t_scores.sum().clamp(min=1.0)
    p_t = (t_box / t).softmax(-1)
    kl_box = (p_t * ((t_box / t).log_softmax(-1) - (s_box / t).log_softmax(-1))).sum(-1)
    weight = t_scores.amax(-1)  # [B, N]
    loss_box = (kl_box.mean(-1) * weight).sum() / weight.sum().clamp(min=1.0)
    total = scale * (cfg.cls_weight * loss_cls + cfg.box_weight * loss_box)
    return DistillParts(total=total, cls=float(loss_cls.detach()), box=float(loss_box.detach()))


@dataclass
class Distiller:
    """A frozen teacher plus the distillation weights; keeps each step's terms for the log."""

    teacher: Detector
    cfg: DistillConfig
    source: str
    cls_history: list[float] = field(default_factory=list)
    box_history: list[float] = field(default_factory=list)

    def prepare(self, student_cfg: DetectorConfig, device: str) -> None:
        """Check the student can match the teacher anchor for anchor; move the teacher."""
        t = self.teacher.cfg
        if (t.num_classes, t.reg_max) != (student_cfg.num_classes, student_cfg.reg_max):
            raise TeacherError(
                f"teacher {self.source!r} has {t.num_classes} classes and reg_max {t.reg_max}; "
                f"the student has {student_cfg.num_classes} and {student_cfg.reg_max}")
        self.teacher = self.teacher.to(device)

    def __call__(self, student: Detector, student_raw: list[Tensor], images: Tensor
                 ) -> DistillParts:
        with torch.no_grad():
            teacher_raw = self.teacher.raw(images)
        parts = distill_loss(student, student_raw, teacher_raw, self.cfg)
        self.cls_history.append(parts.cls)
        self.box_history.append(parts.box)
        return parts

    def describe(self) -> dict[str, Any]:
        """What the run log records about the teacher and the weights."""
        return {"source": self.source, "detector": asdict(self.teacher.cfg), **asdict(self.cfg)}

    def recent(self, steps: int) -> dict[str, Any]:
        """Mean terms over the last `steps` steps, for the per-epoch record."""
        cls, box = self.cls_history[-steps:], self.box_history[-steps:]
        if not cls:
            return {}
        return {"distill_cls": round(sum(cls) / len(cls), 5),
                "distill_box": round(sum(box) / len(box), 5)}


def make_distiller(source: str | Path, cfg: DistillConfig, device: str = "cpu") -> Distiller:
    return Distiller(load_teacher(source, device), cfg, str(source))
