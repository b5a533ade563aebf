"""The seam between the request path (detect.py) and what holds admission and the batchers.

`DetectCore` parses, validates and decodes; a `Lane` admits the request and hands back a
`Ticket` that follows it to its answer. In one process the lane is `LocalLane`: the model's own
`ModelAdmission`, the server's `PixelBudget` and its batcher. In a front-end process
(server/workers) it is a `RemoteLane`, whose tickets ask the engine process, which drives a
`LocalLane` of its own with what they send: the admission rules are the same code either way.

A ticket's life: `admit` (counted in, pixels reserved) -> `place` (decode thread: where the
letterboxed canvas goes) -> `decoded` (the caller saw the decode end) -> `decode_finished` (the
decode thread is done with the request, or dropped it unstarted; may come after the caller left)
-> `submit` (the batch queue) -> `release` (answered or failed; always called).
"""

from __future__ import annotations

import time
from typing import Protocol

from detserve.engines.base import DecodeParams
from detserve.engines.device_jpeg import device_jpeg_of
from detserve.engines.preprocess import PreparedPixels
from detserve.server.admission import PixelBudget
from detserve.server.batcher import BatchOutcome
from detserve.server.catalog import ModelView
from detserve.server.decode_pool import DecodeOutcome
from detserve.server.registry import BatchItem, ItemResult, ModelRegistry, ServedModel


class Ticket(Protocol):
    """One admitted request, from admission to its answer."""

    @property
    def expected_decode_s(self) -> float:
        """The measured decode time: a decode thread with less time left skips the request."""
        ...

    def place(self, prepared: PreparedPixels) -> PreparedPixels:
        """Runs on the decode thread: the canvas where the engine will read it."""
        ...

    @property
    def decodes_jpeg(self) -> bool:
        """Whether its engine takes the JPEG still encoded (engines/device_jpeg.py): `place`
        and `submit` then get an EncodedJpeg, whose pixels are empty."""
        ...

    def decoded(self, outcome: DecodeOutcome) -> None: ...

    def decode_finished(self) -> None: ...

    async def submit(self, prepared: PreparedPixels, params: DecodeParams,
                     deadline: float | None) -> BatchOutcome[ItemResult]: ...

    def release(self) -> None: ...


class Lane(Protocol):
    async def admit(self, model: ModelView, deadline: float | None, held: bool,
                    pixels: int) -> Ticket:
        """Count the request in and reserve `pixels` decoded pixels, or raise Rejected (or
        RequestError). `held`: a stream frame holding a shared slot (waits, never refused)."""
        ...


class LocalTicket:
    def __init__(self, model: ServedModel, budget: PixelBudget, pixels: int) -> None:
        self.model = model
        self._budget = budget
        self._pixels = pixels
        self._on_way = model.admission.counts.on_way
        self._on_way[id(self)] = time.monotonic()

    @property
    def expected_decode_s(self) -> float:
        return self.model.admission.times.decode_s or 0.0

    @property
    def decodes_jpeg(self) -> bool:
        return self.model.pool.decodes_jpeg

    def place(self, prepared: PreparedPixels) -> PreparedPixels:
        return prepared

    def decoded(self, outcome: DecodeOutcome) -> None:
        if outcome.decoded:
            self.model.admission.times.observe_decode(outcome.decode_s)

    def decode_finished(self) -> None:
        self._budget.release(self._pixels)
        self.model.admission.decoded()

    async def submit(self, prepared: PreparedPixels, params: DecodeParams,
                     deadline: float | None) -> BatchOutcome[ItemResult]:
        item = BatchItem(prepared.pixels, prepared.letterbox, params, device_jpeg_of(prepared))
        self._on_way.pop(id(self), None)
        return await self.model.batcher.submit(item, deadline)

    def release(self) -> None:
        self._on_way.pop(id(self), None)
        self.model.admission.release()


class LocalLane:
    """Admission, pixel budget and batchers in this process."""

    def __init__(self, registry: ModelRegistry, pixels: PixelBudget) -> None:
        self.registry = registry
        self.pixels = pixels

    def admit_now(self, model: ServedModel, deadline: float | None, pixels: int) -> LocalTicket:
        """A unary call: admitted at once or refused (never waits)."""
        admission = model.admission
        admission.admit(deadline, held=False)
        try:  # a retry may fit once the decodes in flight are done
            self.pixels.try_reserve(pixels, admission.times.decode_s)
        except BaseException:
            admission.decoded()
            admission.release()
            raise
        return LocalTicket(model, self.pixels, pixels)

    async def admit_held(self, model: ServedModel, deadline: float | None,
                         pixels: int) -> LocalTicket:
        """A stream frame: skips the count and wait bounds, waits for the pixel budget."""
        admission = model.admission
        admission.admit(deadline, held=True)
        try:
            await self.pixels.reserve(pixels)
        except BaseException:
            admission.decoded()
            admission.release()
            raise
        return LocalTicket(model, self.pixels, pixels)

    async def admit(self, model: ModelView, deadline: float | None, held: bool,
                    pixels: int) -> LocalTicket:
        served = self.registry.models[model.key]
        if held:
            return await self.admit_held(served, deadline, pixels)
        return self.admit_now(served, deadline, pixels)
