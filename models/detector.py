"""The demo detector: a small anchor-free YOLOv8-style network in PyTorch.

`forward` returns the Ultralytics YOLOv8 ONNX layout `[B, 4 + nc, N]`: rows 0-3 are cx, cy, w, h
in input pixels, then one sigmoid score per class; N sums the grid cells of strides 8, 16 and 32.
Keeping that layout means the server's `yolov8` decoder serves this model and users' own exports
alike. Boxes come from a distribution-focal (DFL) head: per side, a softmax over `reg_max` bins
whose expectation is the distance in strides, which localises more precisely than one regressed
number and exports as plain Softmax + 1x1 Conv.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

STRIDES = (8, 16, 32)
# Channels of the five backbone stages at width_mult 1.0 (strides 2, 4, 8, 16, 32).
BASE_CHANNELS = (16, 32, 64, 96, 160)
# C2f repeats of the four stages after the stem at depth_mult 1.0.
BASE_DEPTHS = (1, 2, 2, 1)


@dataclass(frozen=True)
class DetectorConfig:
    num_classes: int
    width_mult: float = 1.0
    depth_mult: float = 1.0
    reg_max: int = 16

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        for name in ("width_mult", "depth_mult"):
            value = getattr(self, name)
            if not 0.1 <= value <= 8.0:
                raise ValueError(f"{name} must be in [0.1, 8.0], got {value}")
        if not 2 <= self.reg_max <= 64:
            raise ValueError(f"reg_max must be in [2, 64], got {self.reg_max}")

    def channels(self) -> tuple[int, ...]:
        return tuple(_round8(c * self.width_mult) for c in BASE_CHANNELS)

    def depths(self) -> tuple[int, ...]:
        return tuple(max(1, round(d * self.depth_mult)) for d in BASE_DEPTHS)


def _round8(value: float) -> int:
    return max(8, int(math.ceil(value / 8) * 8))


class ConvBnAct(nn.Module):
    """Conv -> BatchNorm -> SiLU; `fuse()` folds the BatchNorm into the conv for export."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))  # type: ignore[no-any-return]

    def fuse(self) -> None:
        bn = self.bn
        if not isinstance(bn, nn.BatchNorm2d):
            return
        conv = self.conv
        mean, var = cast(Tensor, bn.running_mean), cast(Tensor, bn.running_var)
        scale = bn.weight / (var + bn.eps).sqrt()
        k, s = conv.kernel_size[0], conv.stride[0]
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, k, s, k // 2, bias=True)
        with torch.no_grad():
            fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            cast(Tensor, fused.bias).copy_(bn.bias - mean * scale)
        self.conv = fused
        self.bn = nn.Identity()


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = ConvBnAct(c, c, 3)
        self.cv2 = ConvBnAct(c, c, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.cv2(self.cv1(x))  # type: ignore[no-any-return]


class C2f(nn.Module):
    """YOLOv8's split-and-concat block: cheap, and gradients reach every bottleneck directly."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        self.hidden = c_out // 2
        self.cv1 = ConvBnAct(c_in, 2 * self.hidden, 1)
        self.cv2 = ConvBnAct((2 + n) * self.hidden, c_out, 1)
        blocks = [Bottleneck(self.hidden) for _ in range(n)]
        self.blocks = nn.ModuleList(blocks if shortcut else [
            nn.Sequential(ConvBnAct(self.hidden, self.hidden), ConvBnAct(self.hidden, self.hidden))
            for _ in range(n)
        ])

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.cv1(x).split(self.hidden, dim=1))
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))  # type: ignore[no-any-return]


class SPPF(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        hidden = c // 2
        self.cv1 = ConvBnAct(c, hidden, 1)
        self.cv2 = ConvBnAct(hidden * 4, c, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, dim=1))  # type: ignore[no-any-return]


class Backbone(nn.Module):
    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        c, n = cfg.channels(), cfg.depths()
        self.stem = ConvBnAct(3, c[0], 3, 2)
        self.stage2 = nn.Sequential(ConvBnAct(c[0], c[1], 3, 2), C2f(c[1], c[1], n[0]))
        self.stage3 = nn.Sequential(ConvBnAct(c[1], c[2], 3, 2), C2f(c[2], c[2], n[1]))
        self.stage4 = nn.Sequential(ConvBnAct(c[2], c[3], 3, 2), C2f(c[3], c[3], n[2]))
        self.stage5 = nn.Sequential(ConvBnAct(c[3], c[4], 3, 2), C2f(c[4], c[4], n[3]), SPPF(c[4]))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        return p3, p4, self.stage5(p4)


class Neck(nn.Module):
    """FPN top-down then PAN bottom-up, as in YOLOv8."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        c, n = cfg.channels(), max(1, round(cfg.depth_mult))
        c3, c4, c5 = c[2], c[3], c[4]
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = C2f(c5 + c4, c4, n, shortcut=False)
        self.td3 = C2f(c4 + c3, c3, n, shortcut=False)
        self.down3 = ConvBnAct(c3, c3, 3, 2)
        self.bu4 = C2f(c3 + c4, c4, n, shortcut=False)
        self.down4 = ConvBnAct(c4, c4, 3, 2)
        self.bu5 = C2f(c4 + c5, c5, n, shortcut=False)
        self.out_channels = (c3, c4, c5)

    def forward(self, feats: tuple[Tensor, Tensor, Tensor]) -> list[Tensor]:
        p3, p4, p5 = feats
        t4 = self.td4(torch.cat([self.up(p5), p4], 1))
        o3 = self.td3(torch.cat([self.up(t4), p3], 1))
        o4 = self.bu4(torch.cat([self.down3(o3), t4], 1))
        o5 = self.bu5(torch.cat([self.down4(o4), p5], 1))
        return [o3, o4, o5]


class Head(nn.Module):
    """Decoupled head per level: a box branch (4 x reg_max DFL logits) and a class branch."""

    def __init__(self, cfg: DetectorConfig, in_channels: tuple[int, ...]) -> None:
        super().__init__()
        nc, r = cfg.num_classes, cfg.reg_max
        cb = max(16, in_channels[0] // 2, r * 2)
        cc = max(in_channels[0], min(nc * 2, 64))
        self.box = nn.ModuleList(
            nn.Sequential(ConvBnAct(c, cb), ConvBnAct(cb, cb), nn.Conv2d(cb, 4 * r, 1))
            for c in in_channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(ConvBnAct(c, cc), ConvBnAct(cc, cc), nn.Conv2d(cc, nc, 1))
            for c in in_channels
        )
        self._init_bias(nc)

    def _init_bias(self, nc: int) -> None:
        # Start class scores near 0.01 at 320 px (YOLOv8's prior), so early BCE is not swamped by
        # thousands of confident background cells.
        for seq, stride in zip(self.cls, STRIDES, strict=True):
            last = cast(nn.Conv2d, cast(nn.Sequential, seq)[-1])
            nn.init.constant_(cast(Tensor, last.bias), math.log(5 / nc / (640 / stride) ** 2))
        for seq in self.box:
            last = cast(nn.Conv2d, cast(nn.Sequential, seq)[-1])
            nn.init.constant_(cast(Tensor, last.bias), 1.0)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [torch.cat([b(f), c(f)], 1) for f, b, c in zip(feats, self.box, self.cls,
                                                               strict=True)]


def make_anchors(shapes: list[tuple[int, int]], device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Cell centres `[N, 2]` (x, y in input pixels) and their strides `[N, 1]`, level by level."""
    points, strides = [], []
    for (h, w), s in zip(shapes, STRIDES, strict=True):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx, yy], -1).reshape(-1, 2))
        strides.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(strides)


class Detector(nn.Module):
    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.neck = Neck(cfg)
        self.head = Head(cfg, self.neck.out_channels)
        # Expectation over DFL bins as a fixed 1x1 conv: exports as one Conv node.
        self.dfl = nn.Conv2d(cfg.reg_max, 1, 1, bias=False)
        self.dfl.weight.data[:] = torch.arange(cfg.reg_max, dtype=torch.float32).view(
            1, cfg.reg_max, 1, 1)
        self.dfl.requires_grad_(False)

    def raw(self, x: Tensor) -> list[Tensor]:
        """Per level `[B, 4*reg_max + nc, H, W]`: DFL logits then class logits (for training)."""
        return self.head(self.neck(self.backbone(x)))  # type: ignore[no-any-return]

    def flatten(self, raw: list[Tensor]) -> tuple[Tensor, Tensor]:
        """DFL logits `[B, N, 4, reg_max]` and class logits `[B, N, nc]` over all levels."""
        b, r = raw[0].shape[0], self.cfg.reg_max
        cat = torch.cat([f.flatten(2) for f in raw], 2).transpose(1, 2)
        return cat[..., : 4 * r].reshape(b, -1, 4, r), cat[..., 4 * r:]

    def decode(self, raw: list[Tensor]) -> Tensor:
        b, r = raw[0].shape[0], self.cfg.reg_max
        shapes = [(int(f.shape[2]), int(f.shape[3])) for f in raw]
        points, strides = make_anchors(shapes, raw[0].device, raw[0].dtype)
        cat = torch.cat([f.flatten(2) for f in raw], 2)  # [B, 4r + nc, N]
        box, cls = cat[:, : 4 * r], cat[:, 4 * r:]
        n = box.shape[-1]
        prob = box.view(b, 4, r, n).transpose(1, 2).softmax(1)  # [B, r, 4, N]
        dist = self.dfl(prob).view(b, 4, n)
        pts, st = points.t().unsqueeze(0), strides.t().unsqueeze(0)
        lt, rb = dist[:, :2], dist[:, 2:]
        x1y1, x2y2 = pts - lt * st, pts + rb * st
        cxcy, wh = (x1y1 + x2y2) / 2, x2y2 - x1y1
        return torch.cat([cxcy, wh, cls.sigmoid()], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.raw(x))

    def fuse(self) -> Detector:
        """Fold every BatchNorm into its conv (inference only)."""
        for module in self.modules():
            if isinstance(module, ConvBnAct):
                module.fuse()
        return self


def build_detector(cfg: DetectorConfig) -> Detector:
    return Detector(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(model: nn.Module, cfg: DetectorConfig, path: str | Path,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save weights + config (+ optional training state) so `load_checkpoint` rebuilds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"config": asdict(cfg), "model": model.state_dict()}
    if extra:
        payload.update(extra)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a torn checkpoint
    return path


def load_checkpoint(path: str | Path) -> tuple[Detector, DetectorConfig]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise ValueError(f"{str(path)!r} is not a detserve detector checkpoint")
    cfg = DetectorConfig(**payload["config"])
    model = build_detector(cfg)
    model.load_state_dict(payload["model"])
    model.eval()
    return model, cfg
