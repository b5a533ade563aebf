"""What the server under test says it serves (GetModelInfo): engine, precision, model, NMS.

The harness asks once per server, right after it answers SERVING, and remembers the answer by
target (host:port); `resultsdoc.setting_entry` copies it into each setting it records for that
target. A registry rather than a parameter because the scenario scripts build their setting
entries after the server they measured has stopped (and ports are not reused meanwhile: a new
server at the same target replaces the entry before any setting of it is recorded).
"""

from __future__ import annotations

from typing import Any

from detserve.client.results import DetectError, ModelInfo

# The GetModelInfo fields a report needs to say what ran; classes and thresholds stay out.
FIELDS = ("name", "version", "engine", "precision", "nms", "input_size", "output_format")

_BY_TARGET: dict[str, dict[str, Any]] = {}


def info_fields(info: ModelInfo) -> dict[str, Any]:
    full = info.to_json()
    return {k: full[k] for k in FIELDS if k in full}


async def fetch(target: str, model: str = "") -> dict[str, Any]:
    """GetModelInfo of `model` at `target`, reduced to FIELDS, or {"error": "CODE: message"}
    (a server without the RPC is still measurable)."""
    from detserve.client.client import AsyncDetectClient

    async with AsyncDetectClient(target, timeout_s=10.0) as client:
        try:
            return info_fields(await client.model_info(model))
        except DetectError as err:
            return {"error": f"{err.code.name}: {err.details}"}


def remember(target: str, info: dict[str, Any]) -> None:
    _BY_TARGET[target] = dict(info)


async def fetch_and_remember(target: str, model: str = "") -> dict[str, Any]:
    info = await fetch(target, model)
    remember(target, info)
    return info


def recorded(target: str) -> dict[str, Any] | None:
    """The info remembered for `target`, a copy; None when nobody asked that server."""
    info = _BY_TARGET.get(target)
    return None if info is None else dict(info)


def describe(info: dict[str, Any] | None) -> str:
    """One report cell: `shapes@320 v1: openvino int8, NMS host, input 320x320`."""
    if info is None:
        return "not recorded"
    if "error" in info:
        return f"GetModelInfo failed: {info['error']}"
    size = info.get("input_size") or []
    shape = "x".join(str(v) for v in size) if size else "?"
    return (f"{info.get('name')} v{info.get('version')}: {info.get('engine')} "
            f"{info.get('precision')}, NMS {info.get('nms')}, input {shape}")
