"""OS-level thread names, so `top -H`, `ps -L` and /proc/<pid>/task/*/comm tell the server's
threads apart (Python's own thread names stay inside Python). Threads a library starts inherit
the name of the thread that started them: the engines' worker threads (OpenVINO, ONNX Runtime)
are created when an engine is built, so building engines on a thread named `ENGINE` names
them too. benchmarks/workers.py reads these names to split a process's CPU time."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable, Mapping
from typing import Any

from detserve.engines.base import Engine
from detserve.engines.manifest import ModelPackage

ENGINE = "ds-engine"  # building engines, and the threads the engine libraries start
BATCH = "ds-batch"  # the batchers' engine runs
DECODE = "ds-decode"  # decode + letterbox
_PR_SET_NAME = 15
_MAX = 15  # the kernel keeps 15 bytes of a name


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def name_os_thread(name: str) -> None:
    """Name the calling thread (first 15 bytes); a no-op where the OS has no such call. On the
    main thread this is the process name that `ps` and `top` show."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_NAME, name.encode()[:_MAX], 0, 0, 0)


EngineFactory = Callable[[ModelPackage, str, Mapping[str, Any]], Engine]


def naming_engines(factory: EngineFactory) -> EngineFactory:
    """`factory`, naming the thread that builds an engine `ENGINE` first."""

    def build(package: ModelPackage, kind: str, options: Mapping[str, Any]) -> Engine:
        name_os_thread(ENGINE)
        return factory(package, kind, options)

    return build
