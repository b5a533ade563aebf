"""Device JPEG decode (torch-cuda `decode: device`), the parts that run without torchvision:
the front end's plan (header, letterbox, host fallback), the device letterbox and
normalisation on torch's CPU fed by libjpeg-turbo (simplejpeg, the host's own decoder, in the
role of torchvision's decode_jpeg), the per-image retry, and the start-up errors. The real
torchvision decode runs in test_gpu_decode_tv.py, in .venv-tv; the last test here runs that file
there when .venv-tv exists."""

from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import simplejpeg
import torch
from torch import Tensor

from detserve.engines.device_jpeg import (
    EncodedJpeg,
    deferred,
    device_jpeg_of,
    plan_device_jpeg,
)
from detserve.engines.gpu_decode import DeviceDecoder, orient_chw
from detserve.engines.jpeg import orient
from detserve.engines.manifest import Manifest
from detserve.engines.preprocess import (
    ImageError,
    check_encoded,
    decode_encoded_native,
    pixels_to_tensor,
    prepare_decoded,
)
from detserve.protos import detection_pb2 as pb
from detserve.server.detect import _prepare

from .gpu_decode_helpers import (
    DEFAULT_PACKAGE,
    LIMIT,
    NO_VENV_TV,
    corrupt,
    jpeg,
    manifest,
    photo,
    png,
    pytest_in_venv_tv,
    venv_tv_ready,
)

CPU = torch.device("cpu")


def libjpeg_decode(data: list[Tensor]) -> list[Tensor]:
    """JPEG bytes -> [3, H, W] uint8 RGB, raising on bad data: decode_jpeg's contract."""
    return [torch.from_numpy(np.ascontiguousarray(simplejpeg.decode_jpeg(
        t.numpy().tobytes(), colorspace="RGB", strict=True).transpose(2, 0, 1))) for t in data]


def host_tensor(data: bytes, m: Manifest) -> npt.NDArray[np.float32]:
    prepared = prepare_decoded(decode_encoded_native(data, LIMIT, m), m)
    return np.asarray(pixels_to_tensor(prepared.pixels[None], m)[0], np.float32)


@pytest.mark.parametrize(("size", "orientation"), [((200, 120), 1), ((90, 160), 6),
                                                   ((640, 480), 8), ((64, 64), 3)])
def test_plan_has_the_host_letterbox(size: tuple[int, int], orientation: int) -> None:
    m = manifest(96, 64)
    data = jpeg(photo(*size), orientation=orientation)
    plan = plan_device_jpeg(data, LIMIT, m)
    host = prepare_decoded(decode_encoded_native(data, LIMIT, m), m)
    assert plan is not None and plan.letterbox == host.letterbox
    assert plan.stored_size == size and plan.orientation == orientation
    box = plan.letterbox
    assert plan.resized == (round(box.scale_x * box.orig_width), round(box.scale_y *
                                                                      box.orig_height))
    assert plan.offset == (int(box.pad_x), int(box.pad_y))


def test_progressive_jpeg_and_png_stay_on_the_host() -> None:
    m = manifest()
    assert plan_device_jpeg(jpeg(photo(80, 60), progressive=True), LIMIT, m) is None
    assert plan_device_jpeg(png(photo(80, 60)), LIMIT, m) is None


def test_bad_input_is_refused_with_the_host_message() -> None:
    ok, buf = cv2.imencode(".jpg", photo(80, 60)[..., 0])
    assert ok
    gray = bytes(buf.tobytes())
    with pytest.raises(ImageError) as host:
        check_encoded(gray, LIMIT)
    with pytest.raises(ImageError) as device:
        plan_device_jpeg(gray, LIMIT, manifest())
    assert str(device.value) == str(host.value) and "grayscale" in str(host.value)
    with pytest.raises(ImageError, match="above the limit"):
        plan_device_jpeg(jpeg(photo(80, 60)), 80 * 60 - 1, manifest())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_chw_turns_like_the_host(orientation: int) -> None:
    stored = photo(48, 32)
    want = orient(stored, orientation)
    got = orient_chw(torch.from_numpy(stored).permute(2, 0, 1), orientation)
    assert np.array_equal(got.permute(1, 2, 0).numpy(), want)


@pytest.mark.parametrize(("size", "orientation", "pre"), [
    ((64, 64), 1, {}),  # no resize: the same canvas exactly
    ((40, 24), 1, {"color_order": "BGR", "pad_value": 0}),  # upscale, letterbox, BGR model
    ((160, 96), 6, {}),  # downscale under 2x, EXIF turn
    ((400, 300), 1, {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}),  # 2x+
    ((100, 50), 1, {"resize": "stretch"}),
])
def test_device_canvas_matches_the_host_canvas(size: tuple[int, int], orientation: int,
                                               pre: dict[str, Any]) -> None:
    m = manifest(64, 64, **pre)
    data = jpeg(photo(*size), orientation=orientation)
    plan = plan_device_jpeg(data, LIMIT, m)
    assert plan is not None
    batch, failed = DeviceDecoder(CPU, m, libjpeg_decode).batch([plan])
    assert not failed and tuple(batch.shape) == (1, 3, 64, 64)
    want = host_tensor(data, m)
    levels = np.abs(batch[0].numpy() - want) * np.asarray(m.preprocess.std)[:, None, None] * 255
    if size == (64, 64):
        assert levels.max() < 1e-3
    else:  # the same picture in the same place; resampling differs by a level or so
        assert levels.mean() < 2.0 and np.percentile(levels, 99) < 24


def test_a_corrupt_jpeg_fails_alone_and_host_canvases_ride_along() -> None:
    m = manifest(64, 64)
    good, bad = jpeg(photo(120, 80)), corrupt(jpeg(photo(120, 80)))
    plans = [plan_device_jpeg(d, LIMIT, m) for d in (good, bad)]
    host = prepare_decoded(decode_encoded_native(png(photo(50, 70)), LIMIT, m), m)
    assert plans[0] is not None and plans[1] is not None
    decoder = DeviceDecoder(CPU, m, libjpeg_decode)
    batch, failed = decoder.batch([plans[0], host.pixels, plans[1]])
    assert list(failed) == [2]
    message = str(failed[2])
    assert message.startswith("JPEG image (120x80, ") and "is corrupt" in message
    assert "re-encode the image or send it as PNG" in message
    alone, _ = decoder.batch([plans[0]])
    assert torch.equal(batch[0], alone[0])
    assert np.allclose(batch[1].numpy(), pixels_to_tensor(host.pixels[None], m)[0])


def test_a_decoder_that_fails_on_a_known_good_image_is_an_engine_fault() -> None:
    def broken(data: list[Tensor]) -> list[Tensor]:  # a device whose decoder is gone
        raise RuntimeError("nvjpeg status 6: execution failed")

    m = manifest()
    plan = plan_device_jpeg(jpeg(photo(80, 60)), LIMIT, m)
    assert plan is not None
    with pytest.raises(RuntimeError, match="fails on a known-good image too"):
        DeviceDecoder(CPU, m, broken).batch([plan, plan])


def test_the_front_end_defers_only_what_the_device_takes() -> None:
    m = manifest()
    keep = lambda p: p  # noqa: E731 - the local ticket's place
    data = jpeg(photo(80, 60))
    left = _prepare(pb.Image(encoded=data), m, LIMIT, True, keep, True)
    assert isinstance(left, EncodedJpeg) and left.pixels.size == 0
    assert device_jpeg_of(left) == plan_device_jpeg(data, LIMIT, m)
    assert deferred(left.jpeg).letterbox == left.letterbox
    for image in (pb.Image(encoded=jpeg(photo(80, 60), progressive=True)),
                  pb.Image(encoded=png(photo(80, 60))), pb.Image(encoded=data)):
        on_host = _prepare(image, m, LIMIT, True, keep, image.encoded != data)
        assert device_jpeg_of(on_host) is None and on_host.pixels.shape == (64, 64, 3)


def _torchvision_here() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_torchvision_here(), reason="torchvision is importable in this environment")
def test_decode_device_without_torchvision_is_a_start_up_error() -> None:
    from detserve.server.config import ConfigError, ModelConfig
    from detserve.server.model_loading import default_engine_factory, load_model

    cfg = ModelConfig(package=DEFAULT_PACKAGE, engine="torch-cuda",
                      engine_options={"device": "cpu", "decode": "device"})
    with pytest.raises(ConfigError, match="needs torchvision") as err:
        load_model(0, cfg, default_engine_factory)
    assert "or use decode: host" in str(err.value)


def test_an_unknown_decode_mode_names_the_choices() -> None:
    from detserve.engines.torch_cuda import TorchEngine

    with pytest.raises(ValueError, match=r"'decode' must be one of \['host', 'device'\]"):
        TorchEngine(DEFAULT_PACKAGE, device="cpu", decode="gpu")


@pytest.mark.skipif(not venv_tv_ready(), reason=NO_VENV_TV)
@pytest.mark.timeout(900)
def test_the_torchvision_decode_tests_pass_in_venv_tv() -> None:
    """test_gpu_decode_tv.py skips in the suite's .venv (no torchvision): run it for real."""
    print(pytest_in_venv_tv("tests/engines/test_gpu_decode_tv.py", 840), file=sys.stderr)
