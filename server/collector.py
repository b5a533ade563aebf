"""The garbage collector in a server process: what start-up made is frozen out of its reach."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Put every object alive once the server is up (modules, engines, config) out of the
    garbage collector's reach; returns how many. A full collection scans every tracked object:
    with the ~78,000 of start-up one took 65 ms on this CPU, and every call in flight waited for
    it. After this, collections scan only what serving made. Called by each server process's main
    (`serve`, a front end, the engine process) once it is up, not by `start_server`: tests start
    many servers in one process, and frozen objects are never collected."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
