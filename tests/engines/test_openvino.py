"""OpenVINO engine: same answers as ONNX Runtime, precision choice, and the compile cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from detserve.engines import openvino as openvino_engine
from detserve.engines.manifest import load_package
from detserve.engines.openvino import OpenVinoEngine, choose_precision

pytest.importorskip("openvino")


def _blocks_batch() -> np.ndarray:
    batch = np.full((3, 3, 64, 64), 114 / 255, np.float32)
    batch[0, :, 0:32, 0:32] = [[[1.0]], [[0.0]], [[0.0]]]  # red block, top-left cell
    batch[2, :, 32:64, 32:64] = [[[0.0]], [[0.0]], [[1.0]]]  # blue block, bottom-right cell
    return batch


def _first(engine: OpenVinoEngine, batch: np.ndarray) -> np.ndarray:
    return np.asarray(engine.infer(batch)[0], np.float32)


def _ort_outputs(package_dir: Path, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(package_dir / "model.onnx"))
    return [np.asarray(o) for o in session.run(None, {"images": batch})]


def test_f32_matches_onnxruntime(tiny_package: Path) -> None:
    engine = OpenVinoEngine(load_package(tiny_package), precision="f32", num_threads=1)
    batch = _blocks_batch()
    got = engine.infer(batch)
    want = _ort_outputs(tiny_package, batch)
    assert len(got) == len(want) == 1
    assert got[0].shape == (3, 7, 4)
    np.testing.assert_allclose(np.asarray(got[0], np.float32), want[0], atol=1e-5)
    assert engine.manifest.precision == "fp32"
    assert engine.kind == "openvino"


def test_dynamic_batch_sizes_share_one_compiled_model(tiny_package: Path) -> None:
    package = load_package(tiny_package)
    first = OpenVinoEngine(package, precision="f32", num_threads=1)
    second = OpenVinoEngine(package, precision="f32", num_threads=1)
    assert first._compiled is second._compiled
    for size in (1, 2, 5):
        out = first.infer(np.zeros((size, 3, 64, 64), np.float32))[0]
        assert out.shape == (size, 7, 4)


def test_bf16_when_the_cpu_has_it(tiny_package: Path) -> None:
    engine = OpenVinoEngine(load_package(tiny_package), precision="bf16", num_threads=1)
    out = _first(engine, _blocks_batch())
    want = _ort_outputs(tiny_package, _blocks_batch())[0]
    # bf16 keeps 8 bits of mantissa: boxes up to 64 px are exact to about 0.25 px.
    np.testing.assert_allclose(out, want, atol=0.5)
    assert engine.manifest.precision in ("bf16", "fp32")
    if engine.manifest.precision == "fp32":
        assert "does not report BF16" in engine.manifest.metadata["precision_note"]


def test_compiled_model_cache_dir_is_written(tiny_package: Path, tmp_path: Path) -> None:
    cache = tmp_path / "ov-cache"
    OpenVinoEngine(load_package(tiny_package), precision="f32", num_streams=1, cache_dir=cache)
    assert any(cache.iterdir())


@pytest.mark.parametrize(
    ("requested", "package", "caps", "effective", "noted"),
    [
        ("auto", "fp32", ["FP32", "BF16", "INT8"], "bf16", False),
        ("auto", "fp32", ["FP32", "INT8"], "f32", False),
        ("bf16", "fp32", ["FP32"], "f32", True),
        ("f32", "fp32", ["FP32", "BF16"], "f32", False),
        ("auto", "int8", ["FP32", "BF16", "INT8"], "int8", False),
    ],
)
def test_choose_precision(
    requested: str, package: str, caps: list[str], effective: str, noted: bool
) -> None:
    choice = choose_precision(requested, package, caps)
    assert choice.effective == effective
    assert bool(choice.note) is noted


def test_bad_settings_name_the_value(tiny_package: Path) -> None:
    with pytest.raises(ValueError, match="got 'fp64'"):
        choose_precision("fp64", "fp32", [])
    with pytest.raises(ValueError, match="needs an INT8 package"):
        choose_precision("int8", "fp32", ["INT8"])
    with pytest.raises(ValueError, match="num_threads must be an integer >= 1, got 0"):
        OpenVinoEngine(load_package(tiny_package), num_threads=0)
    with pytest.raises(ValueError, match="performance_hint"):
        OpenVinoEngine(load_package(tiny_package), performance_hint="FAST")


def test_static_batch_sizes_run_the_plan_and_match_the_dynamic_model(tiny_package: Path) -> None:
    package = load_package(tiny_package)
    dynamic = OpenVinoEngine(package, precision="f32", num_threads=1)
    # Costs given, so the plan is known: one run of 4 is cheaper than 1 + 1 + 1 but dearer than
    # 1 + 1, and a batch above the largest size chains runs.
    static = OpenVinoEngine(package, precision="f32", num_threads=1, static_batch_sizes=[4, 1],
                            max_batch_size=8, plan_costs_ms={1: 1.0, 4: 2.5})
    assert static.static_batch_sizes == (1, 4)
    assert [static.batch_plan(n) for n in (1, 2, 3, 4, 6, 8)] == [
        (1,), (1, 1), (4,), (4,), (4, 1, 1), (4, 4)]
    assert dynamic.batch_plan(6) == (6,)
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 4, 6, 8):  # exact, chained ones, padded, exact, chained, two fours
        batch = rng.random((size, 3, 64, 64), dtype=np.float32)
        got = _first(static, batch)
        assert got.shape == (size, 7, 4)
        np.testing.assert_allclose(got, _first(dynamic, batch), atol=1e-5)


def test_static_plan_costs_are_measured_when_not_given(tiny_package: Path) -> None:
    engine = OpenVinoEngine(load_package(tiny_package), precision="f32", num_threads=1,
                            static_batch_sizes=[1, 2], max_batch_size=3)
    plan = engine.plan
    assert plan is not None and sorted(plan.costs_s) == [1, 2]
    assert all(0 < cost < 5.0 for cost in plan.costs_s.values())
    assert sorted(plan.chunks) == [1, 2, 3] and all(sum(c) >= n for n, c in plan.chunks.items())


def test_plan_costs_must_name_every_static_size(tiny_package: Path) -> None:
    with pytest.raises(ValueError, match=r"plan_costs_ms .* \[1, 4\], got sizes \[1\]"):
        OpenVinoEngine(load_package(tiny_package), static_batch_sizes=[1, 4],
                       plan_costs_ms={1: 1.0})


def test_bad_static_batch_sizes_name_the_value(tiny_package: Path) -> None:
    with pytest.raises(ValueError, match=r"static_batch_sizes .* got \[0, 8\]"):
        OpenVinoEngine(load_package(tiny_package), static_batch_sizes=[0, 8])


def test_bf16_falls_back_to_f32_when_the_cpu_lacks_it(
    tiny_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The capability check is forced off; everything else (compile, infer) is real.
    monkeypatch.setattr(openvino_engine, "cpu_capabilities", lambda core, device: ["FP32", "INT8"])
    engine = OpenVinoEngine(load_package(tiny_package), precision="bf16", num_threads=1)
    assert engine.precision.effective == "f32"
    assert engine.config["INFERENCE_PRECISION_HINT"] == "f32"
    assert engine.manifest.precision == "fp32"
    assert "does not report BF16" in engine.manifest.metadata["precision_note"]
    want = _ort_outputs(tiny_package, _blocks_batch())[0]
    np.testing.assert_allclose(_first(engine, _blocks_batch()), want, atol=1e-5)


def test_second_load_reuses_the_disk_cache(tiny_package: Path, tmp_path: Path) -> None:
    cache = tmp_path / "ov-cache"
    first = OpenVinoEngine(load_package(tiny_package), precision="f32", cache_dir=cache)
    want = _first(first, _blocks_batch())
    blobs = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    openvino_engine._COMPILED.clear()  # as after a restart: only the disk cache is left
    second = OpenVinoEngine(load_package(tiny_package), precision="f32", cache_dir=cache)
    assert second._compiled is not first._compiled
    assert first._compiled.get_property("LOADED_FROM_CACHE") is False
    assert second._compiled.get_property("LOADED_FROM_CACHE") is True
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == blobs  # nothing recompiled
    np.testing.assert_array_equal(_first(second, _blocks_batch()), want)


def _canvases(n: int, side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)


@pytest.mark.parametrize("static", [(), (1, 2, 4)])
def test_pixel_input_normalises_in_the_graph_like_the_host(
    tiny_package: Path, static: tuple[int, ...]
) -> None:
    from detserve.engines.preprocess import pixels_to_tensor

    package = load_package(tiny_package)
    host = OpenVinoEngine(package, precision="f32", num_threads=1, static_batch_sizes=static,
                          plan_costs_ms={1: 1.0, 2: 1.5, 4: 2.0} if static else None)
    graph = OpenVinoEngine(package, precision="f32", num_threads=1, static_batch_sizes=static,
                           plan_costs_ms={1: 1.0, 2: 1.5, 4: 2.0} if static else None,
                           pixel_input=True)
    assert (host.takes_pixels, graph.takes_pixels) == (False, True)
    for n in (1, 3, 5):
        pixels = _canvases(n)
        want = np.asarray(host.infer(pixels_to_tensor(pixels, package.manifest))[0])
        got = np.asarray(graph.infer_pixels(pixels)[0])
        assert got.shape == want.shape == (n, 7, 4)
        np.testing.assert_allclose(got, want, atol=1e-5)
        # Floats still work on a pixel-input engine (evaluation tools), on models made on demand.
        floats = np.asarray(graph.infer(pixels_to_tensor(pixels, package.manifest))[0])
        np.testing.assert_allclose(floats, want, atol=1e-6)


def test_pixel_input_applies_the_manifests_mean_and_std(tiny_package: Path) -> None:
    import dataclasses

    from detserve.engines.preprocess import pixels_to_tensor

    package = load_package(tiny_package)
    pre = dataclasses.replace(package.manifest.preprocess, scale=1 / 255,
                              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    package = dataclasses.replace(
        package, manifest=dataclasses.replace(package.manifest, preprocess=pre))
    host = OpenVinoEngine(package, precision="f32", num_threads=1)
    graph = OpenVinoEngine(package, precision="f32", num_threads=1, pixel_input=True)
    pixels = _canvases(2)
    want = np.asarray(host.infer(pixels_to_tensor(pixels, package.manifest))[0])
    np.testing.assert_allclose(np.asarray(graph.infer_pixels(pixels)[0]), want, atol=1e-4)
