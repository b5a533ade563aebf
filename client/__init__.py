"""detserve's Python client.

    from detserve.client import DetectClient
    with DetectClient("localhost:50051") as client:
        result = client.detect(cv2.imread("scene.jpg"))  # numpy frames are BGR by default

NUMPY FRAMES ARE BGR BY DEFAULT (OpenCV's order); pass DetectOptions(pixel_format="RGB8") for RGB
arrays. Paths and encoded bytes may be JPEG/PNG or anything OpenCV reads (converted locally).
"""

from detserve.client.client import AsyncDetectClient, DetectClient, DetectOptions, ModelList
from detserve.client.results import (
    BatchingInfo,
    DetectError,
    Detection,
    DetectResult,
    ModelInfo,
    Timing,
)
from detserve.client.security import ChannelSecurity

__all__ = [
    "AsyncDetectClient",
    "BatchingInfo",
    "ChannelSecurity",
    "DetectClient",
    "DetectError",
    "DetectOptions",
    "DetectResult",
    "Detection",
    "ModelInfo",
    "ModelList",
    "Timing",
]
