"""PyTorch engine for NVIDIA GPUs (and, without CUDA graphs, the CPU so CI can test it).

The model is rebuilt from the package's PyTorch checkpoint (manifest `metadata.torch_checkpoint`,
loaded by `detserve.models.detector.load_checkpoint`), BatchNorm folded, then:
- FP16/BF16 through autocast (`cache_enabled=False`, which CUDA graph capture requires);
- one static input buffer and one CUDA graph per allowed batch size, captured at start-up; a batch
  is padded up to the nearest captured size and only its real rows are answered;
- pinned host buffers and non-blocking copies on the engine's own stream, so several engine
  instances overlap their copies and kernels;
- with `nms="gpu"` NMS runs on the device (`torchvision.ops.batched_nms`, pure-torch elsewhere)
  and only the final detections cross to the host, as the end2end format; `manifest` then says
  `output_format: end2end`, `nms: gpu` so the server decodes accordingly. With `nms="host"` the
  raw yolov8 output is returned and the server's numpy NMS runs;
- with `decode="device"` the engine also takes encoded JPEGs (`infer_images`): one batched
  `torchvision.io.decode_jpeg` on the device, letterbox and normalisation there
  (engines/gpu_decode.py); the server then hands it JPEG bytes instead of canvases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from detserve.engines.device_jpeg import DeviceJpeg, DeviceRun, check_decode_mode
from detserve.engines.manifest import Manifest, ManifestError, ModelPackage, load_package
from detserve.engines.torch_nms import NmsSettings, nms_backend, yolov8_end2end

if TYPE_CHECKING:
    from detserve.engines.gpu_decode import DeviceDecoder

PRECISIONS: Mapping[str, torch.dtype | None] = {
    "fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16,
}
NMS_MODES = ("gpu", "host")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
CHECKPOINT_KEY = "torch_checkpoint"
REBUILD_HOW = "detserve.models.detector.load_checkpoint(metadata.torch_checkpoint), BN fused"


@dataclass
class _Slot:
    """Everything fixed for one batch size: the static input, and the captured graph if any."""

    size: int
    inputs: Tensor
    graph: torch.cuda.CUDAGraph | None = None
    outputs: Tensor | None = None


def _check_choice(value: str, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ValueError(f"torch-cuda engine option '{name}' must be one of {list(choices)}, "
                         f"got {value!r}")
    return value


def _check_batch_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad or not sizes:
        raise ValueError("torch-cuda engine option 'batch_sizes' must be a non-empty list of "
                         f"integers >= 1, got {list(sizes)!r}")
    return tuple(sorted(set(sizes)))


def _resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"torch-cuda engine option 'device' is not a torch device: "
                         f"{device!r}") from exc
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"torch-cuda engine option 'device' must be cuda[:N] or cpu, "
                         f"got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"torch-cuda engine asked for device {device!r}, but this torch "
                           f"({torch.__version__}) sees no CUDA GPU; use device: cpu")
    return dev


def load_torch_model(package: ModelPackage) -> nn.Module:
    """Rebuild the package's network from its checkpoint (BatchNorm folded, eval mode)."""
    from detserve.models.detector import load_checkpoint

    name = package.manifest.metadata.get(CHECKPOINT_KEY)
    if not isinstance(name, str) or not name:
        raise ManifestError(
            f"manifest field 'metadata.{CHECKPOINT_KEY}' must name the PyTorch checkpoint for the "
            f"torch-cuda engine, got {name!r} in {str(package.root)!r}")
    model, cfg = load_checkpoint(package.root / name)
    if cfg.num_classes != package.manifest.num_classes:
        raise ManifestError(
            f"checkpoint {name!r} has {cfg.num_classes} classes but the manifest lists "
            f"{package.manifest.num_classes}: {list(package.manifest.classes)}")
    fuse = getattr(model, "fuse", None)
    if callable(fuse):
        fuse()
    model.eval()
    rebuilt: nn.Module = model
    return rebuilt


class TorchEngine:
    """Engine over a PyTorch model; one object per server engine instance (one worker thread)."""

    def __init__(
        self,
        package: ModelPackage | str | Path,
        device: str = "cuda",
        precision: str = "fp32",
        nms: str = "gpu",
        batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
        cuda_graphs: bool = True,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        pre_nms_top_k: int | None = None,
        warmup_iters: int = 2,
        decode: str = "host",
    ) -> None:
        self._package = package if isinstance(package, ModelPackage) else load_package(package)
        self.graph_error = ""  # why capture failed, if it did (the engine then runs eagerly)
        self._dev = _resolve_device(device)
        self._decode = check_decode_mode(decode, "torch-cuda")
        self._jpeg = self._device_decoder()  # first: a missing torchvision fails in a moment
        self._precision = _check_choice(precision, tuple(PRECISIONS), "precision")
        self._amp_dtype = PRECISIONS[precision]
        self._nms = _check_choice(nms, NMS_MODES, "nms")
        self._sizes = _check_batch_sizes(batch_sizes)
        self._graphs = bool(cuda_graphs) and self._dev.type == "cuda"
        self._settings = self._nms_settings(score_threshold, iou_threshold, max_detections,
                                            pre_nms_top_k)
        self._manifest = self._engine_manifest()
        self._model = load_torch_model(self._package).to(self._dev)
        m = self._package.manifest
        self._chw = (3, m.input_height, m.input_width)
        self._stream: torch.cuda.Stream | None = None
        if self._dev.type == "cuda":
            self._stream = torch.cuda.Stream(self._dev)  # type: ignore[no-untyped-call]
        self._pinned: dict[str, Tensor] = {}
        self._pool = torch.cuda.graph_pool_handle() if self._graphs else None
        self._slots: dict[int, _Slot] = {}
        self.last_padded_size = 0  # batch size the last chunk actually ran at
        try:
            self._make_slots(warmup_iters)
        except RuntimeError as exc:
            if not self._graphs:
                raise
            # A model that cannot be captured still serves, only slower: say so, don't die.
            self.graph_error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"torch-cuda: CUDA graph capture failed, running eagerly: {exc}",
                          RuntimeWarning, stacklevel=2)
            self._graphs, self._pool = False, None
            self._make_slots(warmup_iters)
            self._manifest = self._engine_manifest()

    def _make_slots(self, warmup_iters: int) -> None:
        self._slots.clear()
        with torch.inference_mode():
            # Largest first: smaller graphs then reuse the pool memory the big one freed.
            for size in reversed(self._sizes):
                self._slots[size] = self._make_slot(size, warmup_iters)
        if self._dev.type == "cuda":
            torch.cuda.synchronize(self._dev)  # capture ran on side streams; settle before use

    # ---- Engine protocol -------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def kind(self) -> str:
        return "torch-cuda"

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return self._sizes

    @property
    def cuda_graphs(self) -> bool:
        """Whether batches replay captured CUDA graphs (False on the CPU or after a failure)."""
        return self._graphs

    @property
    def decodes_jpeg(self) -> bool:
        return self._jpeg is not None

    @property
    def nms_backend(self) -> str:
        return nms_backend() if self._nms == "gpu" else "host"

    def infer(self, batch: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.generic]]:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self._chw or batch.shape[0] < 1:
            want = ", ".join(map(str, self._chw))
            raise ValueError(f"torch-cuda engine expects a batch [B, {want}] with B >= 1, "
                             f"got {tuple(batch.shape)}")
        return self._run_chunks(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))

    def infer_images(self, images: Sequence[npt.NDArray[np.uint8] | DeviceJpeg]) -> DeviceRun:
        """A batch of uint8 canvases ([H, W, 3], the manifest's colour order) and encoded JPEGs,
        decoded and letterboxed on the device; the JPEGs that fail are named in the result."""
        if self._jpeg is None:
            raise RuntimeError("this torch-cuda engine decodes on the host (engine option "
                               "decode: host); infer_images needs decode: device")
        if not images:
            raise ValueError("torch-cuda engine got an empty batch of images")
        with torch.inference_mode(), self._on_stream():
            if self._stream is not None:
                self._stream.synchronize()  # the decoder wants an idle stream (gpu_decode.py)
            batch, failed = self._jpeg.batch(images)
            return DeviceRun(self._run_chunks(batch), failed)

    def run_resident(self, size: int) -> Sequence[Tensor]:
        """Network (+ GPU NMS) on the device-resident input buffer of batch size `size`, no host
        copies: what the GPU itself costs, for benchmarks beside `infer`."""
        slot = self._slots.get(size)
        if slot is None:
            raise ValueError(f"batch size {size} is not one of this engine's {list(self._sizes)}")
        with torch.inference_mode(), self._on_stream():
            preds = self._forward(slot)
            outs = [preds] if self._nms == "host" else list(
                yolov8_end2end(preds, self._settings).as_tuple())
        if self._stream is not None:
            self._stream.synchronize()
        return outs

    def close(self) -> None:
        self._slots.clear()
        self._pinned.clear()
        if self._dev.type == "cuda":
            torch.cuda.empty_cache()

    # ---- set-up ----------------------------------------------------------------------------
    def _device_decoder(self) -> DeviceDecoder | None:
        if self._decode == "host":
            return None
        from detserve.engines.gpu_decode import DeviceDecoder  # torchvision only when asked

        return DeviceDecoder(self._dev, self._package.manifest)

    def _nms_settings(self, score: float | None, iou: float | None, max_det: int | None,
                      top_k: int | None) -> NmsSettings:
        post = self._package.manifest.postprocess
        settings = NmsSettings(
            score_threshold=post.score_threshold if score is None else float(score),
            iou_threshold=post.iou_threshold if iou is None else float(iou),
            max_detections=post.max_detections if max_det is None else int(max_det),
            pre_nms_top_k=post.pre_nms_top_k if top_k is None else int(top_k),
            multi_label=post.multi_label,
        )
        if not 0.0 <= settings.score_threshold <= 1.0:
            raise ValueError(f"torch-cuda engine option 'score_threshold' must be in [0, 1], "
                             f"got {score!r}")
        if not 0.0 < settings.iou_threshold <= 1.0:
            raise ValueError(f"torch-cuda engine option 'iou_threshold' must be in (0, 1], "
                             f"got {iou!r}")
        if settings.max_detections < 1 or settings.pre_nms_top_k < 1:
            raise ValueError("torch-cuda engine options 'max_detections' and 'pre_nms_top_k' "
                             f"must be >= 1, got {max_det!r} and {top_k!r}")
        return settings

    def _engine_manifest(self) -> Manifest:
        base = self._package.manifest
        meta: dict[str, Any] = dict(base.metadata)
        meta.update(torch_rebuild=REBUILD_HOW, torch_device=str(self._dev),
                    torch_cuda_graphs=self._graphs, torch_batch_sizes=list(self._sizes),
                    torch_decode=self._decode)
        if self.graph_error:
            meta["torch_cuda_graphs_error"] = self.graph_error
        if self._nms == "host":
            return dataclasses.replace(base, precision=self._precision, metadata=meta)
        meta.update(gpu_nms_backend=nms_backend(),
                    gpu_nms_score_threshold=self._settings.score_threshold)
        post = dataclasses.replace(base.postprocess, iou_threshold=self._settings.iou_threshold,
                                   max_detections=self._settings.max_detections)
        return dataclasses.replace(base, output_format="end2end", nms="gpu",
                                   precision=self._precision, postprocess=post, metadata=meta)

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        if self._stream is None:
            yield
            return
        with torch.cuda.stream(self._stream):
            yield

    def _network(self, x: Tensor) -> Tensor:
        if self._amp_dtype is None:
            return self._model(x).float()  # type: ignore[no-any-return]
        with torch.autocast(self._dev.type, dtype=self._amp_dtype, cache_enabled=False):
            y = self._model(x)
        return y.float()  # type: ignore[no-any-return]

    def _make_slot(self, size: int, warmup_iters: int) -> _Slot:
        inputs = torch.zeros((size, *self._chw), device=self._dev)
        slot = _Slot(size, inputs)
        if not self._graphs:
            return slot
        side = torch.cuda.Stream(self._dev)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self._dev))
        with torch.cuda.stream(side):  # warm-up outside capture (cuDNN autotune, allocator)
            for _ in range(max(1, warmup_iters)):
                self._network(inputs)
        torch.cuda.current_stream(self._dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another engine's thread may touch CUDA while this one captures.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            slot.outputs = self._network(inputs)
        slot.graph = graph
        return slot

    # ---- running ---------------------------------------------------------------------------
    def batch_plan(self, n: int) -> tuple[int, ...]:
        """The captured sizes a batch of `n` runs as: chunks of the largest, the rest padded up
        to the next captured size (a GPU pays little for padding; a CPU engine plans instead)."""
        top = self._sizes[-1]
        full, rest = divmod(n, top)
        return (top,) * full + ((self.padded_size(rest),) if rest else ())

    def padded_size(self, n: int) -> int:
        """The allowed batch size a chunk of `n` rows runs at (n <= the largest size)."""
        for size in self._sizes:
            if size >= n:
                return size
        raise ValueError(f"chunk of {n} rows exceeds the largest batch size {self._sizes[-1]}")

    def _pinned_like(self, name: str, t: Tensor) -> Tensor:
        """A pinned host buffer for `t`, grown on demand and reused across batches."""
        buf = self._pinned.get(name)
        if buf is None or buf.numel() < t.numel():
            buf = torch.empty(max(t.numel(), 1), dtype=t.dtype, pin_memory=True)
            self._pinned[name] = buf
        return buf[: t.numel()].view(t.shape)

    def _to_device(self, slot: _Slot, src: Tensor) -> None:
        n = src.shape[0]
        if self._dev.type == "cuda" and src.device.type == "cpu":
            host = self._pinned_like("input", src)
            host.copy_(src)
            slot.inputs[:n].copy_(host, non_blocking=True)
        else:
            slot.inputs[:n].copy_(src)
        if n < slot.size:
            slot.inputs[n:].zero_()  # stale rows would still cost nothing, but keep runs repeatable

    def _forward(self, slot: _Slot) -> Tensor:
        if slot.graph is not None and slot.outputs is not None:
            slot.graph.replay()
            return slot.outputs
        return self._network(slot.inputs)

    def _to_host(self, outputs: Sequence[Tensor]) -> list[npt.NDArray[np.generic]]:
        if self._stream is None:
            return [t.detach().clone().numpy() for t in outputs]
        hosts = []
        for i, t in enumerate(outputs):
            host = self._pinned_like(f"out{i}", t)
            host.copy_(t, non_blocking=True)
            hosts.append(host)
        self._stream.synchronize()
        return [h.numpy().copy() for h in hosts]  # the pinned buffers are reused next batch

    def _run_chunks(self, data: Tensor) -> Sequence[npt.NDArray[np.generic]]:
        step = self._sizes[-1]
        parts = [self._run_chunk(data[i:i + step]) for i in range(0, data.shape[0], step)]
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]

    def _run_chunk(self, chunk: Tensor) -> list[npt.NDArray[np.generic]]:
        n = chunk.shape[0]
        slot = self._slots[self.padded_size(n)]
        self.last_padded_size = slot.size
        with torch.inference_mode(), self._on_stream():
            self._to_device(slot, chunk)
            preds = self._forward(slot)[:n]
            if self._nms == "host":
                return self._to_host([preds])
            return self._to_host(list(yolov8_end2end(preds, self._settings).as_tuple()))
