"""Batching settings reach engines that build per-batch-size artefacts.

TensorRT builds one optimization profile per preferred size up to the maximum batch; torch-cuda
captures one CUDA graph per batch size. Both must build for the batches this server forms, so the
registry passes the model's batching settings to constructors that take them by name, unless the
config's engine_options set them already.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from detserve.engines.base import Engine
from detserve.engines.manifest import Manifest, ModelPackage
from detserve.engines.ort import OrtEngine
from detserve.engines.trt_profiles import build_profiles
from detserve.server.batcher import BatchingConfig
from detserve.server.config import ModelConfig
from detserve.server.registry import (
    ModelRegistry,
    batch_sizes_for,
    engine_class,
    engine_options,
)

from .conftest import server_config


@dataclass
class ProfileEngine:
    """A small engine that, like TensorRT's, builds something per batch size at construction."""

    package: ModelPackage
    max_batch_size: int | None = None
    preferred_batch_sizes: Sequence[int] = ()
    workspace_mb: int = 64

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest

    @property
    def kind(self) -> str:
        return "profile"

    def infer(self, batch: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.generic]]:
        raise NotImplementedError("construction is all these tests look at")

    def close(self) -> None:
        return None


def _cfg(engine: str = "profile", options: Mapping[str, Any] | None = None,
         **batching: Any) -> ModelConfig:  # fmt: skip
    return ModelConfig(package=Path("unused"), engine=engine, engine_options=options or {},
                       batching=BatchingConfig(**batching))  # fmt: skip


def test_constructor_that_takes_batching_gets_it() -> None:
    cfg = _cfg(options={"workspace_mb": 128}, max_batch_size=8, preferred_batch_sizes=(4, 8))
    assert engine_options(cfg, ProfileEngine) == {
        "workspace_mb": 128, "max_batch_size": 8, "preferred_batch_sizes": [4, 8],
    }  # fmt: skip


def test_options_set_in_the_config_win() -> None:
    cfg = _cfg(options={"max_batch_size": 2}, max_batch_size=8, preferred_batch_sizes=(4,))
    assert engine_options(cfg, ProfileEngine) == {
        "max_batch_size": 2, "preferred_batch_sizes": [4],
    }  # fmt: skip


def test_constructor_without_batching_parameters_is_left_alone() -> None:
    cfg = _cfg("onnxruntime", {"intra_op_threads": 1}, max_batch_size=8)
    assert engine_options(cfg, OrtEngine) == {"intra_op_threads": 1}
    assert engine_options(cfg, None) == {"intra_op_threads": 1}  # unknown kind: factory says so


def test_real_engine_kinds_resolve_to_their_constructors() -> None:
    assert engine_class("onnxruntime") is OrtEngine
    assert engine_class("no-such-engine") is None
    trt = engine_class("tensorrt")
    assert trt is not None and trt.__name__ == "TensorRTEngine"
    cfg = _cfg("tensorrt", {"precision": "fp16"}, max_batch_size=16,
               preferred_batch_sizes=(4, 16))  # fmt: skip
    options = engine_options(cfg, trt)
    assert options == {"precision": "fp16", "max_batch_size": 16, "preferred_batch_sizes": [4, 16]}
    # What TensorRTEngine builds from them (its CPU-testable part): one profile per preferred
    # size, tuned at that size, each taking any batch up to the server's maximum.
    profiles = build_profiles(options["max_batch_size"], options["preferred_batch_sizes"])
    assert [(p.min, p.opt, p.max) for p in profiles] == [(1, 4, 16), (1, 16, 16)]


def test_torch_cuda_gets_one_batch_size_per_graph() -> None:
    torch_engine = engine_class("torch-cuda")
    assert torch_engine is not None and torch_engine.__name__ == "TorchEngine"
    cfg = _cfg("torch-cuda", {"nms": "host"}, max_batch_size=12, preferred_batch_sizes=(6,))
    assert engine_options(cfg, torch_engine) == {"nms": "host", "batch_sizes": [1, 2, 4, 6, 8, 12]}
    own = _cfg("torch-cuda", {"batch_sizes": [3]}, max_batch_size=12)
    assert engine_options(own, torch_engine) == {"batch_sizes": [3]}


@pytest.mark.parametrize(
    ("max_batch", "preferred", "sizes"),
    [(1, (), (1,)), (8, (), (1, 2, 4, 8)), (8, (3,), (1, 2, 3, 4, 8)), (5, (5,), (1, 2, 4, 5))],
)
def test_batch_sizes_cover_every_batch_the_batcher_forms(
    max_batch: int, preferred: tuple[int, ...], sizes: tuple[int, ...]
) -> None:
    assert batch_sizes_for(BatchingConfig(max_batch, preferred_batch_sizes=preferred)) == sizes


@dataclass
class OptionsRecorder:
    """Engine factory that keeps the options each engine was asked to start with."""

    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, package: ModelPackage, kind: str, options: Mapping[str, Any]) -> Engine:
        self.seen.append((kind, dict(options)))
        return OrtEngine(package, intra_op_threads=1)


async def test_registry_passes_each_models_batching_to_its_engines(tiny_package: Path) -> None:
    batching = BatchingConfig(max_batch_size=4, preferred_batch_sizes=(2, 4), instances=2)
    models = (
        ModelConfig(package=tiny_package, variant="trt", engine="tensorrt",
                    engine_options={"workspace_mb": 64}, batching=batching),
        ModelConfig(package=tiny_package, variant="ort", engine_options={"intra_op_threads": 1},
                    batching=batching),
    )  # fmt: skip
    recorder = OptionsRecorder()
    registry = await ModelRegistry.start(server_config(*models), recorder)
    try:
        trt = ("tensorrt",
               {"workspace_mb": 64, "max_batch_size": 4, "preferred_batch_sizes": [2, 4]})
        ort = ("onnxruntime", {"intra_op_threads": 1})
        assert recorder.seen == [trt, trt, ort, ort]  # one engine per instance
    finally:
        await asyncio.wait_for(registry.stop(), 10.0)
