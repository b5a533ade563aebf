"""A front end's side of `decode: device` with workers, the parts that run without torchvision:
where `RemoteTicket.place` puts a JPEG left encoded (its slot when it fits, else the SUBMIT
message) and the bound on the message. The real decode, with a `workers: 2` server on
loopback, runs in test_workers_device_jpeg_tv.py, in .venv-tv; the last test here runs that
file there when .venv-tv exists."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import grpc
import pytest

from detserve.engines.device_jpeg import DeviceJpeg, deferred, device_jpeg_of, plan_device_jpeg
from detserve.engines.manifest import load_package
from detserve.server.catalog import ModelEntry
from detserve.server.config import ModelConfig
from detserve.server.errors import RequestError
from detserve.server.workers import remote_lane
from detserve.server.workers.remote_lane import EngineLink, RemoteTicket
from detserve.server.workers.slots import Segment, SlotLayout

from ..engines.gpu_decode_helpers import (
    DEFAULT_PACKAGE,
    LIMIT,
    NO_VENV_TV,
    jpeg,
    photo,
    pytest_in_venv_tv,
    venv_tv_ready,
)

LAYOUT = SlotLayout(slots=2, image_bytes=64 * 64 * 3, reply_rows=4)


def _entry() -> ModelEntry:
    manifest = load_package(DEFAULT_PACKAGE).manifest
    return ModelEntry("shapes@320", "shapes", "320", ModelConfig(package=DEFAULT_PACKAGE),
                      manifest, "torch-cuda", True)


def _plan(width: int, height: int, quality: int = 90) -> DeviceJpeg:
    plan = plan_device_jpeg(jpeg(photo(width, height), quality=quality), LIMIT,
                            _entry().manifest)
    assert plan is not None
    return plan


@pytest.fixture
def segment() -> Iterator[Segment]:
    made = Segment.create(LAYOUT)
    yield made
    made.close()
    made.unlink()


async def test_a_jpeg_that_fits_goes_in_its_slot_and_a_larger_one_in_the_message(
        segment: Segment) -> None:
    ticket = RemoteTicket(EngineLink(), segment, _entry(), 1, 1, 0.0, decodes_jpeg=True)
    assert ticket.decodes_jpeg
    small, large = _plan(80, 60), _plan(400, 300, quality=100)
    assert len(small.data) <= LAYOUT.image_bytes < len(large.data)
    placed = ticket.place(deferred(small))
    assert device_jpeg_of(placed) == small and placed.pixels.size == 0
    assert bytes(segment.encoded(1, len(small.data))) == small.data
    assert bytes(segment.encoded(0, LAYOUT.image_bytes)) == bytes(LAYOUT.image_bytes)
    wire = remote_lane._jpeg_wire(small, LAYOUT.image_bytes)
    assert wire == (len(small.data), small.stored_size, small.orientation, small.resized,
                    small.offset, None)

    ticket.place(deferred(large))  # leaves the slot as it was
    assert bytes(segment.encoded(1, len(small.data))) == small.data
    assert remote_lane._jpeg_wire(large, LAYOUT.image_bytes)[5] == large.data


async def test_a_jpeg_above_the_message_bound_is_resource_exhausted(
        segment: Segment, monkeypatch: pytest.MonkeyPatch) -> None:
    ticket = RemoteTicket(EngineLink(), segment, _entry(), 1, 0, 0.0, decodes_jpeg=True)
    plan = _plan(80, 60)
    monkeypatch.setattr(remote_lane, "MAX_INLINE_JPEG_BYTES", len(plan.data) - 1)
    with pytest.raises(RequestError) as err:
        ticket.place(deferred(plan))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"JPEG image of {len(plan.data)} bytes is above the" in err.value.message
    assert "send a smaller JPEG" in err.value.message


def test_encoded_bytes_beyond_the_image_region_are_refused(segment: Segment) -> None:
    with pytest.raises(ValueError, match="do not fit a slot's image region of 12288"):
        segment.encoded(0, LAYOUT.image_bytes + 1)


@pytest.mark.skipif(not venv_tv_ready(), reason=NO_VENV_TV)
@pytest.mark.timeout(1500)
def test_the_worker_device_decode_tests_pass_in_venv_tv() -> None:
    """test_workers_device_jpeg_tv.py skips in the suite's .venv (no torchvision): run it."""
    print(pytest_in_venv_tv("tests/server/test_workers_device_jpeg_tv.py", 1440), file=sys.stderr)
