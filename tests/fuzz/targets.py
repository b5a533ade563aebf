"""Fuzz targets: what a caller's bytes and an operator's files reach, with the errors each may
raise. Anything else a target raises (or a crash in the native decoders under it) is a bug.

- `decode`: JPEG/PNG bytes through read_header, check_encoded, decode_encoded_native (with a
  manifest, so large JPEGs take the DCT-scaled path) and the letterbox; the decoded size must be
  the header's (EXIF-upright) size.
- `raw`: a raw frame's height, width, pixel format and bytes through decode_raw_native and the
  letterbox.
- `manifest`: manifest.yaml bytes through load_package.
- `config`: server config YAML bytes through load_file and validate.

Plain functions of bytes, so the regression inputs replay without atheris
(tests/fuzz/test_fuzz_targets.py); tests/fuzz/atheris_main.py fuzzes them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detserve.engines.base import DecodeParams
from detserve.engines.manifest import Manifest, ManifestError, Postprocess, load_package
from detserve.engines.preprocess import (
    ImageError,
    check_encoded,
    decode_encoded_native,
    decode_raw_native,
    jpeg_decode_size,
    prepare_decoded,
    read_header,
)
from detserve.server.config import ConfigError, load_file, validate

MAX_PIXELS = 4_000_000
MANIFEST = Manifest(name="fuzz", version="1", classes=("a", "b", "c"), input_width=64,
                    input_height=64, input_name="images",
                    postprocess=Postprocess(score_threshold=0.5, iou_threshold=0.5,
                                            max_detections=10))
FORMATS = ("RGB8", "BGR8", "GRAY8", "RGBA8", "")
_scratch = Path(tempfile.mkdtemp(prefix="detserve-fuzz-"))


def decode(data: bytes) -> None:
    try:
        header = read_header(data)
        check_encoded(data, MAX_PIXELS)
        decoded = decode_encoded_native(data, MAX_PIXELS, MANIFEST)
    except ImageError:
        return
    pixels = decoded.pixels
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, pixels.shape
    shown = decoded.full_size or (pixels.shape[1], pixels.shape[0])
    assert shown == header.display_size, (shown, header)
    if decoded.full_size is not None:
        assert jpeg_decode_size(header, MANIFEST) is not None
    prepared = prepare_decoded(decoded, MANIFEST)
    assert prepared.pixels.shape == (64, 64, 3)


def _take_int(data: bytes, at: int) -> int:
    """A frame side from 1 byte (0-255: small frames) or 4 (anything a uint32 field holds)."""
    if len(data) <= at:
        return 0
    if data[at] & 0x80:
        return int.from_bytes(data[at + 1 : at + 5].ljust(4, b"\0"), "little")
    return data[at] & 0x7F


def raw(data: bytes) -> None:
    height, width = _take_int(data, 0), _take_int(data, 5)
    fmt = FORMATS[data[10] % len(FORMATS)] if len(data) > 10 else "RGB8"
    pixels = data[11:]
    try:
        decoded = decode_raw_native(pixels, height, width, fmt, MAX_PIXELS)
    except ImageError:
        return
    assert decoded.pixels.shape == (height, width, 3), decoded.pixels.shape
    assert prepare_decoded(decoded, MANIFEST).pixels.shape == (64, 64, 3)


def manifest(data: bytes) -> None:
    package = _scratch / "package"
    package.mkdir(exist_ok=True)
    (package / "model.onnx").write_bytes(b"")
    (package / "manifest.yaml").write_bytes(data)
    try:
        loaded = load_package(package)
    except ManifestError:
        return
    params = DecodeParams.from_manifest(loaded.manifest)
    assert 0.0 <= params.score_threshold <= 1.0 and params.max_detections >= 1
    assert loaded.manifest.input_width >= 1 and loaded.manifest.input_height >= 1


def config(data: bytes) -> None:
    path = _scratch / "config.yaml"
    path.write_bytes(data)
    try:
        validate(load_file(path))
    except ConfigError:
        return


TARGETS: dict[str, Callable[[bytes], None]] = {
    "decode": decode, "raw": raw, "manifest": manifest, "config": config,
}
