"""The parts of the TensorRT engine that need no GPU: optimization profiles, padding a batch to
an allowed size, builder flags per precision, and the engine/timing cache and its keys.

Why several profiles: a profile is tuned for its `opt` batch size; the server's preferred batch
sizes are the sizes batches are formed at, so each gets a profile with that `opt` (all spanning
1..max_batch), and a batch runs on the profile whose `opt` is the smallest one that fits it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

MAX_PROFILES = 4  # each profile is tuned separately, so build time grows with their number
# Builder flags per package precision. INT8 packages carry explicit Q/DQ nodes (implicit
# calibration is deprecated in TensorRT 10); FP16 lets their unquantized layers use half.
BUILDER_FLAGS: dict[str, tuple[str, ...]] = {
    "fp32": (),
    "fp16": ("FP16",),
    "bf16": ("BF16",),
    "int8": ("INT8", "FP16"),
}


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    def fits(self, batch: int) -> bool:
        return self.min <= batch <= self.max


def _check_size(value: object, name: str, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"tensorrt engine option '{name}' must be an integer >= 1, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(
            f"tensorrt engine option '{name}' must be in [1, {maximum}] (max_batch_size), "
            f"got {value}"
        )
    return value


def build_profiles(max_batch: int, preferred: Sequence[int] = ()) -> tuple[BatchProfile, ...]:
    """One profile per preferred size (opt), each spanning 1..max_batch; else opt = max."""
    top = _check_size(max_batch, "max_batch_size")
    sizes = sorted({_check_size(p, "preferred_batch_sizes", top) for p in preferred})
    if len(sizes) > MAX_PROFILES:
        raise ValueError(
            f"tensorrt engine option 'preferred_batch_sizes' has {len(sizes)} sizes {sizes}; "
            f"at most {MAX_PROFILES} (each one is a separately tuned optimization profile)"
        )
    return tuple(BatchProfile(1, s, top) for s in sizes or [top])


def select_profile(profiles: Sequence[BatchProfile], batch: int) -> int:
    """Index of the profile with the smallest opt >= batch (the largest opt if none is)."""
    fitting = [i for i, p in enumerate(profiles) if p.fits(batch)]
    if not fitting:
        top = max(p.max for p in profiles)
        raise ValueError(f"batch of {batch} is outside the engine's profiles (1..{top})")
    above = [i for i in fitting if profiles[i].opt >= batch]
    if above:
        return min(above, key=lambda i: profiles[i].opt)
    return max(fitting, key=lambda i: profiles[i].opt)


def padded_batch_size(batch: int, allowed: Sequence[int]) -> int:
    """The smallest allowed size >= batch; a batch above every allowed size is an error."""
    fits = [a for a in allowed if a >= batch]
    if batch < 1 or not fits:
        raise ValueError(f"batch of {batch} fits none of the allowed sizes {sorted(allowed)}")
    return min(fits)


def pad_batch(batch: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    """`batch` with zero images appended up to `size` rows (the extra rows are never answered)."""
    n = batch.shape[0]
    if size < n:
        raise ValueError(f"cannot pad a batch of {n} down to {size}")
    if size == n:
        return batch
    pad = np.zeros((size - n, *batch.shape[1:]), batch.dtype)
    return np.concatenate([batch, pad])


def precision_flags(package_precision: str, requested: str | None) -> tuple[str, tuple[str, ...]]:
    """(build precision, TensorRT BuilderFlag names) for a package and an optional override."""
    chosen = requested or package_precision
    if chosen not in BUILDER_FLAGS:
        raise ValueError(
            f"tensorrt engine option 'precision' must be one of {list(BUILDER_FLAGS)}, got "
            f"{chosen!r}"
        )
    if (chosen == "int8") != (package_precision == "int8"):
        raise ValueError(
            f"tensorrt precision {chosen!r} does not fit a {package_precision!r} package: INT8 "
            "needs a Q/DQ package (detserve-model quantize --int8 --for tensorrt) and a Q/DQ "
            "package builds as int8 only"
        )
    if package_precision == "fp16" and chosen == "fp32":
        raise ValueError("an fp16 package has half-precision weights; build it as fp16")
    return chosen, BUILDER_FLAGS[chosen]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineCacheKey:
    """Everything a serialized engine depends on; a change in any field means a rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str
    profiles: tuple[BatchProfile, ...]
    workspace_mb: int

    def digest(self) -> str:
        raw = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


class EngineCache:
    """Engines (`<model>-<precision>-<digest>.plan`) and timing caches in one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def engine_path(self, model: str, key: EngineCacheKey) -> Path:
        return self.root / f"{_slug(model)}-{key.precision}-{key.digest()[:20]}.plan"

    def timing_path(self, tensorrt_version: str, gpu_name: str) -> Path:
        # Timings depend on the GPU and TensorRT only, so all models share one file.
        return self.root / f"timing-{_slug(tensorrt_version)}-{_slug(gpu_name)}.cache"

    @staticmethod
    def read(path: Path) -> bytes | None:
        return path.read_bytes() if path.is_file() else None

    def write(self, path: Path, data: bytes) -> Path:
        """Atomic write: a reader never sees half a plan, even with several builders at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
