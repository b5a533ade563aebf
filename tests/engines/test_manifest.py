"""Manifest validation: preprocess.pad_value is a uint8 pixel value; multi_label is a bool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from detserve.engines.manifest import (
    Manifest,
    ManifestError,
    load_package,
    parse_manifest,
    write_manifest,
)

BASE = Manifest(name="m", version="1", classes=("a",), input_width=64, input_height=64)


def _with_pad(value: Any) -> dict[str, Any]:
    raw = BASE.to_dict()
    raw["preprocess"]["pad_value"] = value
    return raw


@pytest.mark.parametrize("value", [0, 114, 255])
def test_pad_values_of_a_uint8_pixel_load(value: int) -> None:
    assert parse_manifest(_with_pad(value)).preprocess.pad_value == value


@pytest.mark.parametrize("value", [256, 1000, -1, 114.0, True, "114"])
def test_pad_value_outside_a_uint8_pixel_is_named(value: Any) -> None:
    message = f"manifest field 'preprocess.pad_value' must be an integer in [0, 255], got {value!r}"
    with pytest.raises(ManifestError) as caught:
        parse_manifest(_with_pad(value))
    assert str(caught.value) == message


def test_package_with_pad_value_256_is_refused_at_load(tmp_path: Path) -> None:
    write_manifest(BASE, tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    load_package(tmp_path)  # the same package with the default pad value loads
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(_with_pad(256), sort_keys=False))
    with pytest.raises(ManifestError, match=r"'preprocess.pad_value' .* got 256"):
        load_package(tmp_path)


def test_other_integer_fields_keep_their_open_bound() -> None:
    raw = BASE.to_dict()
    raw["input"]["max_batch_size"] = 0
    message = r"'input.max_batch_size' must be an integer >= 1, got 0"
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw)


def test_multi_label_round_trips_and_defaults_to_one_class_per_anchor() -> None:
    raw = BASE.to_dict()
    del raw["postprocess"]["multi_label"]
    assert parse_manifest(raw).postprocess.multi_label is False
    raw["postprocess"]["multi_label"] = True
    assert parse_manifest(raw).postprocess.multi_label is True
    assert parse_manifest(parse_manifest(raw).to_dict()).postprocess.multi_label is True


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_multi_label_must_be_a_boolean(value: Any) -> None:
    raw = BASE.to_dict()
    raw["postprocess"]["multi_label"] = value
    message = f"manifest field 'postprocess.multi_label' must be true or false, got {value!r}"
    with pytest.raises(ManifestError) as caught:
        parse_manifest(raw)
    assert str(caught.value) == message
