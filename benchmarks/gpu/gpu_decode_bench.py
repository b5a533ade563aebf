"""Device benchmark, the JPEG decode axis (issue 16): decode on the host against decode on the
engine's device (torch-cuda `decode: device`, engines/gpu_decode.py).

- in process: the same JPEGs decoded and letterboxed the way a server decode thread does it
  (libjpeg-turbo, reduced in the DCT where the image is twice the input, cv2 resize), one image
  at a time on one thread, against `DeviceDecoder.batch` (one batched decode_jpeg, letterbox and
  normalisation on the device) at several batch sizes; images/s each;
- served: the default model behind `detserve-server` with `decode: host` and `decode: device`,
  one closed level each (gpu_server.measure_workers), at 1 front-end process and, where the
  front-end workers hand encoded JPEGs to the engine process, at more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from detserve.engines.manifest import Manifest
from detserve.engines.preprocess import decode_encoded_native, prepare_decoded

Log = Callable[[str], None]
MAX_PIXELS = 4096 * 4096


def device_decode_missing(device: str) -> str:
    """Why JPEGs cannot be decoded on `device` here ("" when they can): no torchvision, or one
    that cannot decode there."""
    from detserve.engines.gpu_decode import load_decoder

    try:
        load_decoder(torch.device(device))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def synthetic_jpegs(count: int, width: int, height: int) -> list[bytes]:
    from detserve.client.bench.inputs import InputSpec, load_inputs

    spec = InputSpec(source="synthetic", count=count, width=width, height=height, format="jpeg")
    return [im.encoded for im in load_inputs(spec).images]


def _rate(fn: Callable[[], int], budget_s: float, sync: Callable[[], None]) -> tuple[int, float]:
    """(images, seconds) of `fn` (returns the images it did) run back to back ~`budget_s`."""
    fn()  # warm: nvJPEG's buffers, the allocator, cv2's threads
    sync()
    start, images, runs = time.perf_counter(), 0, 0
    while runs < 3 or time.perf_counter() - start < budget_s:
        images += fn()
        runs += 1
    sync()
    return images, time.perf_counter() - start


def _row(size: tuple[int, int], where: str, batch: int, images: int, seconds: float
         ) -> dict[str, Any]:
    return {"input": f"{size[0]}x{size[1]}", "decode": where, "batch": batch,
            "img_per_s": images / seconds, "ms_per_batch": seconds / images * batch * 1e3}


def decode_sweep(manifest: Manifest, device: str, sizes: Sequence[tuple[int, int]],
                 batches: Sequence[int], deadline: float, log: Log) -> list[dict[str, Any]]:
    """Host (one image, one thread) against device (batched) decode + letterbox, per size."""
    from detserve.engines.device_jpeg import plan_device_jpeg
    from detserve.engines.gpu_decode import DeviceDecoder

    decoder = DeviceDecoder(torch.device(device), manifest)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows: list[dict[str, Any]] = []
    steps = len(sizes) * (1 + len(batches))
    for size in sizes:
        jpegs = synthetic_jpegs(max(batches), *size)
        plans = [plan_device_jpeg(j, MAX_PIXELS, manifest) for j in jpegs]
        if any(p is None for p in plans):
            raise RuntimeError(f"synthetic {size} JPEGs are not device-decodable")
        share = max(0.2, (deadline - time.monotonic()) / max(1, steps - len(rows)) - 0.5)

        def host(js: list[bytes] = jpegs) -> int:
            for j in js:
                prepare_decoded(decode_encoded_native(j, MAX_PIXELS, manifest), manifest)
            return len(js)

        rows.append(_logged(_row(size, "host", 1, *_rate(host, share, lambda: None)), log))
        for b in batches:
            if time.monotonic() + share > deadline:
                log(f"decode {size} batch {b}: budget spent, skipped")
                continue

            def dev(ps: list[Any] = plans[:b]) -> int:
                decoder.batch(ps)
                return len(ps)

            rows.append(_logged(_row(size, "device", b, *_rate(dev, share, sync)), log))
    return rows


def _logged(row: dict[str, Any], log: Log) -> dict[str, Any]:
    log(f"decode {row['input']} on the {row['decode']}, batch {row['batch']}: "
        f"{row['img_per_s']:.0f} img/s, {row['ms_per_batch']:.2f} ms/batch")
    return row
