"""QAT settings (no torch import, so the CLI can show the defaults without loading torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PRESETS = ("mixed", "performance")


@dataclass(frozen=True)
class QatConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 5e-5
    warmup_steps: int = 20
    seed: int = 0
    train_scenes: int = 2000
    max_side: int = 416  # train's pool rule: longer side downscaled to at most this
    preset: str = "mixed"
    threads: int = 1
    save_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "train_scenes", "threads", "save_every", "max_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got "
                                 f"{getattr(self, name)}")  # fmt: skip
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.lr < 1:
            raise ValueError(f"--lr must be in (0, 1), got {self.lr}")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.train_scenes < self.batch_size:
            raise ValueError(f"--train-scenes {self.train_scenes} is fewer than --batch-size "
                             f"{self.batch_size}")  # fmt: skip

    def settings(self) -> dict[str, Any]:
        """What decides the result (threads and checkpoint spacing do not)."""
        d = asdict(self)
        del d["threads"], d["save_every"]
        return d
