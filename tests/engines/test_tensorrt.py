"""TensorRT engine: profile selection, batch padding, flags and cache keys on any machine; the
engine itself (build, cache reuse, outputs against ONNX Runtime) where TensorRT and a GPU are."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detserve.engines.factory import create_engine
from detserve.engines.manifest import load_package
from detserve.engines.trt_profiles import (
    BatchProfile,
    EngineCache,
    EngineCacheKey,
    build_profiles,
    file_sha256,
    pad_batch,
    padded_batch_size,
    precision_flags,
    select_profile,
)


def test_profiles_one_per_preferred_size_spanning_the_whole_range() -> None:
    assert build_profiles(16) == (BatchProfile(1, 16, 16),)
    assert build_profiles(16, [8, 4, 8]) == (BatchProfile(1, 4, 16), BatchProfile(1, 8, 16))


@pytest.mark.parametrize(
    ("max_batch", "preferred", "needle"),
    [
        (0, (), "'max_batch_size' must be an integer >= 1, got 0"),
        (8, (16,), r"'preferred_batch_sizes' must be in \[1, 8\] \(max_batch_size\), got 16"),
        (8, (True,), "'preferred_batch_sizes' must be an integer >= 1, got True"),
        (64, (1, 2, 4, 8, 16), "has 5 sizes"),
    ],
)
def test_bad_profile_options_name_the_value(
    max_batch: int, preferred: tuple[int, ...], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        build_profiles(max_batch, preferred)


def test_select_profile_takes_the_smallest_opt_that_fits() -> None:
    profiles = build_profiles(32, [4, 16])
    assert [select_profile(profiles, b) for b in (1, 4, 5, 16, 17, 32)] == [0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match=r"batch of 33 is outside the engine's profiles \(1..32\)"):
        select_profile(profiles, 33)


def test_padding_to_an_allowed_size() -> None:
    assert [padded_batch_size(b, [4, 8, 16]) for b in (1, 4, 5, 9, 16)] == [4, 4, 8, 16, 16]
    with pytest.raises(
        ValueError, match=r"batch of 17 fits none of the allowed sizes \[4, 8, 16\]"
    ):
        padded_batch_size(17, [16, 8, 4])
    batch = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2) + 1
    padded = pad_batch(batch, 4)
    assert padded.shape == (4, 3, 2, 2) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:2], batch)
    assert not padded[2:].any()
    assert pad_batch(batch, 2) is batch
    with pytest.raises(ValueError, match="cannot pad a batch of 2 down to 1"):
        pad_batch(batch, 1)


def test_precision_flags() -> None:
    assert precision_flags("fp32", None) == ("fp32", ())
    assert precision_flags("fp32", "fp16") == ("fp16", ("FP16",))
    assert precision_flags("int8", None) == ("int8", ("INT8", "FP16"))
    with pytest.raises(ValueError, match="INT8 needs a Q/DQ package"):
        precision_flags("fp32", "int8")
    with pytest.raises(ValueError, match=r"must be one of .* got 'fp8'"):
        precision_flags("fp32", "fp8")
    with pytest.raises(ValueError, match="build it as fp16"):
        precision_flags("fp16", "fp32")


def _key(**changes: object) -> EngineCacheKey:
    key = EngineCacheKey("ab" * 32, "10.3.0", "NVIDIA H100 80GB HBM3", "fp16",
                         build_profiles(16, [8]), 2048)  # fmt: skip
    return replace(key, **changes)  # type: ignore[arg-type]


def test_cache_key_changes_with_every_field() -> None:
    base = _key().digest()
    assert _key().digest() == base  # stable across calls and processes (json, sorted keys)
    variants = [
        _key(onnx_sha256="cd" * 32), _key(tensorrt_version="10.4.0"),
        _key(gpu_name="NVIDIA H200"), _key(precision="fp32"),
        _key(profiles=build_profiles(16, [4])), _key(workspace_mb=1024),
    ]  # fmt: skip
    digests = {v.digest() for v in variants}
    assert base not in digests and len(digests) == len(variants)


def test_engine_cache_paths_and_atomic_write(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "c")
    key = _key()
    path = cache.engine_path("shapes", key)
    assert path.name == f"shapes-fp16-{key.digest()[:20]}.plan"
    assert cache.timing_path("10.3.0", "NVIDIA H100 80GB HBM3").name == (
        "timing-10.3.0-NVIDIA-H100-80GB-HBM3.cache"
    )  # fmt: skip
    assert cache.read(path) is None
    cache.write(path, b"plan-bytes")
    assert cache.read(path) == b"plan-bytes"
    assert [p.name for p in (tmp_path / "c").iterdir()] == [path.name]  # no temp files left


def test_onnx_hash_is_the_file_content_hash(tiny_package: Path, tmp_path: Path) -> None:
    import hashlib

    model = tiny_package / "model.onnx"
    assert file_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def _gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


@pytest.mark.skipif(
    HAVE_TRT, reason="tensorrt is installed here; this checks the message without it"
)
def test_without_tensorrt_the_engine_says_what_is_missing(tiny_package: Path) -> None:
    with pytest.raises(RuntimeError, match=r"needs NVIDIA TensorRT 10 \(pip install tensorrt\)"):
        create_engine(load_package(tiny_package), "tensorrt")


def test_bad_engine_options_are_refused_before_any_gpu_work(tiny_package: Path) -> None:
    with pytest.raises(ValueError, match="'workspace_mb' must be an integer >= 16, got 1"):
        create_engine(load_package(tiny_package), "tensorrt", {"workspace_mb": 1})


needs_trt_gpu = pytest.mark.skipif(
    not (HAVE_TRT and _gpu()),
    reason="needs tensorrt and a CUDA GPU (tensorrt cannot be installed on the CPU machine)",
)


@needs_trt_gpu
def test_yolov8_outputs_match_onnxruntime_and_cache_is_reused(
    tiny_package: Path, tmp_path: Path
) -> None:
    from detserve.engines.tensorrt import TensorRTEngine

    pkg = load_package(tiny_package)
    rng = np.random.default_rng(0)
    batch = rng.random((3, 3, 64, 64), dtype=np.float32)
    want = np.asarray(create_engine(pkg, "onnxruntime").infer(batch)[0], np.float32)
    first = TensorRTEngine(pkg, 8, [4], cache_dir=tmp_path)
    assert first.plan_source == "built" and first.plan_path.is_file()
    got = np.asarray(first.infer(batch)[0], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    second = TensorRTEngine(pkg, 8, [4], cache_dir=tmp_path, pad_to_preferred=True)
    assert second.plan_source == "cache"
    got = np.asarray(second.infer(batch)[0], np.float32)
    assert got.shape == want.shape  # padded to 4 inside, 3 rows answered
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_trt_gpu
def test_efficient_nms_package_matches_the_reference(tiny_package: Path, tmp_path: Path) -> None:
    from detserve.models.efficient_nms_ref import NmsConfig, efficient_nms_yolov8
    from detserve.models.nms_graph import add_nms_package

    cfg = NmsConfig(0.3, 0.5, 10)
    e2e = load_package(add_nms_package(tiny_package, tmp_path / "trt", "tensorrt", cfg))
    batch = np.zeros((2, 3, 64, 64), np.float32)
    batch[0, 0, 0:32, 0:32] = 1.0
    batch[1, 2, 32:64, 32:64] = 0.8
    raw = create_engine(load_package(tiny_package), "onnxruntime").infer(batch)[0]
    want = efficient_nms_yolov8(np.asarray(raw, np.float32), cfg)
    num, boxes, scores, classes = create_engine(
        e2e, "tensorrt", {"cache_dir": str(tmp_path)}
    ).infer(batch)
    np.testing.assert_array_equal(num, want.num_detections)
    np.testing.assert_array_equal(classes, want.classes)
    np.testing.assert_allclose(np.asarray(scores, np.float32), want.scores, atol=1e-5)
    np.testing.assert_allclose(np.asarray(boxes, np.float32), want.boxes, atol=1e-3)
