"""Modules split by job keep their public names where callers import them from: each name
re-exported by the old module is the new module's object, and the old module's __all__ lists
only names it has."""

from __future__ import annotations

import importlib

import pytest

SPLITS = {
    "detserve.server.registry": {
        "detserve.server.engine_pool": ["BatchItem", "EnginePool", "ItemResult", "run_on_engine"],
        "detserve.server.model_loading": ["EngineFactory", "Loaded", "batch_sizes_for",
                                          "default_engine_factory", "engine_class",
                                          "engine_options", "fit_batching"],
    },
    "detserve.engines.openvino": {
        "detserve.engines.openvino_precision": ["PRECISIONS", "PrecisionChoice",
                                                "choose_precision", "cpu_capabilities"],
    },
    "detserve.engines.preprocess": {
        "detserve.engines.image_header": ["ACCEPTED", "JPEG_SOI", "MIN_IMAGE_SIDE",
                                          "PIXEL_FORMATS", "PNG_SIGNATURE", "ImageError",
                                          "ImageHeader", "ImageTooLargeError", "check_encoded",
                                          "check_raw", "read_header"],
    },
    "detserve.server.config": {"detserve.server.config_values": ["ConfigError"]},
}


@pytest.mark.parametrize("old", sorted(SPLITS))
def test_names_moved_out_are_still_importable_from_the_old_module(old: str) -> None:
    module = importlib.import_module(old)
    for new, names in SPLITS[old].items():
        moved = importlib.import_module(new)
        for name in names:
            assert getattr(module, name) is getattr(moved, name), f"{old}.{name}"
            assert name in module.__all__, f"{old}.__all__ lacks {name}"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
