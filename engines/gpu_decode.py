"""A batch's JPEGs decoded, letterboxed and normalised on the engine's device (torch-cuda
`decode: device`; engines/device_jpeg.py says what the front end hands over).

- One `torchvision.io.decode_jpeg(list, device=...)` call per batch (nvJPEG's batched decode on
  CUDA; libjpeg on the CPU, which is how the tests run it). If that call raises, each image is
  decoded alone and only those that fail are refused (ImageError: INVALID_ARGUMENT); if every
  one fails, a known-good probe JPEG tells a bad decoder (an engine fault) from bad images.
- EXIF orientation as engines/jpeg.orient applies it, then the same letterbox geometry as the
  host (preprocess.canvas_geometry): bilinear with half-pixel centres like cv2.INTER_LINEAR,
  antialiased where the picture is more than twice the canvas (where the host decodes at
  reduced size in the DCT), rounded to uint8 values, padded with the manifest's pad value,
  channels put in its colour order, then `x * scale / std - mean / std`.
- Host canvases in the same batch (PNGs, progressive JPEGs, raw frames) go up as uint8 and are
  normalised the same way there.

torchvision is imported only when an engine is built with `decode: device`: the test install
has none, and an engine asked for it without torchvision fails at start-up with a clear error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from detserve.engines.device_jpeg import DeviceJpeg, decode_failure
from detserve.engines.manifest import Manifest
from detserve.engines.preprocess import ImageError

DecodeFn = Callable[[list[Tensor]], list[Tensor]]

# CHW views of engines/jpeg.orient's cv2 steps (dim 1 rows, dim 2 columns).
_ORIENT: dict[int, Callable[[Tensor], Tensor]] = {
    1: lambda t: t,
    2: lambda t: t.flip(2),
    3: lambda t: t.flip(1, 2),
    4: lambda t: t.flip(1),
    5: lambda t: t.transpose(1, 2),
    6: lambda t: t.transpose(1, 2).flip(2),
    7: lambda t: t.transpose(1, 2).flip(1, 2),
    8: lambda t: t.transpose(1, 2).flip(1),
}


def orient_chw(image: Tensor, orientation: int) -> Tensor:
    """`image` ([3, H, W]) turned as EXIF `orientation` says, as engines/jpeg.orient does."""
    return _ORIENT[orientation](image)


def probe_jpeg() -> bytes:
    """A small valid baseline JPEG, to check a decoder works."""
    ok, data = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    if not ok:
        raise RuntimeError("OpenCV could not encode the probe JPEG")
    return bytes(data)


def _as_tensor(data: bytes | memoryview) -> Tensor:
    # bytearray: torch refuses to wrap an immutable buffer without a warning.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def load_decoder(device: torch.device) -> DecodeFn:
    """torchvision's decode_jpeg bound to `device`, checked on a probe image; RuntimeError with
    what to do if torchvision is missing or cannot decode there."""
    try:
        import torchvision
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise RuntimeError(
            f"torch-cuda engine option 'decode: device' needs torchvision (torchvision.io."
            f"decode_jpeg), which failed to import: {exc}; install the torchvision build that "
            f"matches torch {torch.__version__}, or use decode: host") from exc
    # torchvision 0.29 deprecates its image decoders (in favour of TorchCodec) with a warning
    # on every call; the call itself is what this engine measures and serves.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")

    def decode(data: list[Tensor]) -> list[Tensor]:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))

    try:
        decode([_as_tensor(probe_jpeg())])
    except Exception as exc:
        raise RuntimeError(
            f"torch-cuda engine option 'decode: device': torchvision {torchvision.__version__} "
            f"cannot decode JPEGs on {device} ({type(exc).__name__}: {exc}); use decode: host"
        ) from exc
    return decode


class DeviceDecoder:
    """Turns a batch of host canvases and DeviceJpegs into the model's float input on
    `device`. Called from one engine thread at a time, on the engine's stream."""

    def __init__(self, device: torch.device, manifest: Manifest,
                 decode: DecodeFn | None = None) -> None:
        self.device = device
        self._decode = decode or load_decoder(device)
        pre = manifest.preprocess
        self._pad = float(pre.pad_value)
        self._bgr = pre.color_order == "BGR"
        self._shape = (3, manifest.input_height, manifest.input_width)
        std = torch.tensor(pre.std, dtype=torch.float32)
        self._mul = (pre.scale / std).view(1, 3, 1, 1).to(device)
        self._sub = (torch.tensor(pre.mean, dtype=torch.float32) / std).view(1, 3, 1, 1).to(device)

    def batch(self, images: Sequence[npt.NDArray[np.uint8] | DeviceJpeg]
              ) -> tuple[Tensor, dict[int, ImageError]]:
        """The normalised [B, 3, H, W] float32 batch, and the JPEGs that failed (their rows
        hold the pad value only)."""
        # Decode first, on an idle stream: torchvision's CUDA decoder writes its outputs from a
        # stream of its own, into blocks this stream's queued kernels could still be reading
        # (pytorch/vision#9606); the engine synchronizes its stream before calling this.
        jpegs = [(i, im) for i, im in enumerate(images) if isinstance(im, DeviceJpeg)]
        pictures = self.decode([j for _, j in jpegs]) if jpegs else []
        out = torch.empty((len(images), *self._shape), dtype=torch.float32, device=self.device)
        hosts = [i for i, im in enumerate(images) if not isinstance(im, DeviceJpeg)]
        if hosts:
            out[hosts] = self._upload([im for im in images if not isinstance(im, DeviceJpeg)])
        failed: dict[int, ImageError] = {}
        for (i, jpeg), picture in zip(jpegs, pictures, strict=True):
            if isinstance(picture, ImageError):
                failed[i] = picture
                out[i].fill_(self._pad)
            else:
                self.place(out[i], picture, jpeg)
        return out.mul_(self._mul).sub_(self._sub), failed

    def decode(self, jpegs: Sequence[DeviceJpeg]) -> list[Tensor | ImageError]:
        """Each JPEG as [3, H, W] uint8 RGB (as stored), or the ImageError its caller gets."""
        data = [_as_tensor(j.data) for j in jpegs]
        try:
            pictures: Sequence[Tensor | Exception] = self._decode(data)
        except Exception as exc:  # the batched call fails as a whole: find the bad ones
            pictures = [self._decode_one(t) for t in data]
            if all(isinstance(p, Exception) for p in pictures) and not self._healthy():
                raise RuntimeError(f"the JPEG decoder on {self.device} fails on a known-good "
                                   f"image too: {type(exc).__name__}: {exc}") from exc
        return [self._checked(p, j) for p, j in zip(pictures, jpegs, strict=True)]

    def place(self, row: Tensor, picture: Tensor, jpeg: DeviceJpeg) -> None:
        """Write one decoded picture into its canvas row ([3, H, W] float), letterboxed."""
        upright = orient_chw(picture, jpeg.orientation)
        (new_w, new_h), (left, top) = jpeg.resized, jpeg.offset
        height, width = upright.shape[1:]
        x = upright.float()
        if (height, width) != (new_h, new_w):
            # Up to 2x smaller, bilinear with half-pixel centres averages what the host's
            # reduced DCT decode + INTER_LINEAR does (measured closest); further down it would
            # alias, so it is antialiased there.
            shrink = width > 2 * new_w or height > 2 * new_h
            x = F.interpolate(x[None], size=(new_h, new_w), mode="bilinear",
                              align_corners=False, antialias=shrink)[0]
            x = x.round_().clamp_(0.0, 255.0)  # the host canvas is uint8
        if self._bgr:
            x = x.flip(0)
        row.fill_(self._pad)
        row[:, top:top + new_h, left:left + new_w] = x

    def _upload(self, canvases: Sequence[npt.NDArray[np.uint8]]) -> Tensor:
        stacked = np.stack(canvases)
        want = (self._shape[1], self._shape[2], 3)
        if stacked.dtype != np.uint8 or stacked.shape[1:] != want:
            raise ValueError(f"host canvases must be uint8 {list(want)}, got {stacked.dtype} "
                             f"{list(stacked.shape[1:])}")
        return torch.from_numpy(stacked).to(self.device).permute(0, 3, 1, 2).float()

    def _decode_one(self, data: Tensor) -> Tensor | Exception:
        try:
            return self._decode([data])[0]
        except Exception as exc:
            return exc

    def _healthy(self) -> bool:
        return not isinstance(self._decode_one(_as_tensor(probe_jpeg())), Exception)

    def _checked(self, picture: Tensor | Exception, jpeg: DeviceJpeg) -> Tensor | ImageError:
        if isinstance(picture, Exception):
            return decode_failure(jpeg, str(self.device), picture)
        width, height = jpeg.stored_size
        if tuple(picture.shape) != (3, height, width):
            return ImageError(f"JPEG image header says {width}x{height} but it decodes to "
                              f"{list(picture.shape)} (channels, height, width) on "
                              f"{self.device}")
        return picture
