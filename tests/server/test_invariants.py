"""Invariants that were `assert`s (gone under `python -O`) and are now explicit: the token check
as a function of a real TokenStore, a model's shift warm-up, and the front-end message stream's
transport check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from detserve.engines.base import DecodeParams
from detserve.engines.manifest import load_package
from detserve.server.admission import Rejected
from detserve.server.alerts_config import AlertsConfig
from detserve.server.auth import AUTH_KEY, authenticate
from detserve.server.model_shift import ModelShift
from detserve.server.tokens import TokenStore
from detserve.server.workers.ipc import MessageStream

TOKEN = "t0k3n-for-invariants-0123456789abcdef"


@pytest.mark.parametrize(("metadata", "reason"), [
    ((), "no_token"),
    (((AUTH_KEY, f"Basic {TOKEN}"),), "bad_token"),
    (((AUTH_KEY, "Bearer "),), "bad_token"),
    (((AUTH_KEY, "Bearer someone-elses-token-0123456789"),), "bad_token"),
])
def test_authenticate_refuses_unauthenticated(metadata: tuple[tuple[str, str], ...],
                                              reason: str) -> None:
    store = TokenStore.from_text(TOKEN, "test")
    with pytest.raises(Rejected) as caught:
        authenticate(store, metadata)
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == reason


def test_authenticate_accepts_a_listed_token_as_text_or_bytes() -> None:
    store = TokenStore.from_text(f"{TOKEN} blocks", "test")
    grant = authenticate(store, ((AUTH_KEY, f"Bearer {TOKEN}"),))
    assert grant.models == frozenset({"blocks"})
    assert authenticate(store, ((AUTH_KEY, f"bearer  {TOKEN} ".encode()),)) == grant


def test_shift_warm_up_becomes_the_reference_after_its_frames(tiny_package: Path) -> None:
    manifest = load_package(tiny_package).manifest
    config = AlertsConfig(shift_warmup_frames=10)
    shift = ModelShift(manifest, config, None)
    params = DecodeParams.from_manifest(manifest)
    for i in range(9):
        changes, ref = shift.frame([0.9] * (i % 3), params, 0.9 if i % 3 else 0.0)
        assert (changes, ref) == ([], None)
        assert shift.reference is None
    changes, ref = shift.frame([0.8], params, 0.8)
    assert changes == [] and ref is not None and shift.reference is ref
    assert set(shift.windows) == {"detections", "max_score"}
    # warmed: the next frame goes into the windows, not into a second warm-up
    assert shift.frame([0.8], params, 0.8) == ([], None)
    assert shift.windows["detections"].filled == 1


async def test_message_stream_refuses_a_transport_that_is_not_a_stream() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.subprocess_exec(asyncio.SubprocessProtocol, "true")
    stream = MessageStream(lambda m: None, lambda exc: None)
    try:
        with pytest.raises(TypeError, match="needs a stream transport, got _UnixSubprocess"):
            stream.connection_made(transport)
    finally:
        transport.close()
