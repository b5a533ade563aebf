"""OpenVINO option sets under CPU contention: engine-only img/s at batch 1 and 8, on an idle
machine and beside a process that keeps one core busy (what the server's event loop, decode
threads and a co-located load generator take from the engine under overload).

    .venv/bin/python benchmarks/openvino/contention.py > benchmarks/openvino/contention.txt

Option sets (the shipped shapes@320 INT8 IR, static batch sizes 1, 2, 4, 8, uint8 input):
- t2_default: 2 threads, one stream, OpenVINO's own pinning (the served default);
- t2_pinF / t2_pinT: the same with `cpu_pinning` false / true;
- t1x2_pinF: two engines of 1 thread each, unpinned, run from two threads at once (what
  `instances: 2` with `num_threads: 1` runs).
Each figure is one 4 s run; two rounds per condition, the option sets in turn, so the rounds
show the noise. Only ratios within a round mean much on a shared host.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import numpy as np

from detserve.client.bench.sweep import resolve_package
from detserve.engines.manifest import load_package
from detserve.engines.openvino import OpenVinoEngine

RUN_S = 4.0
ROUNDS = 2


def hog(duty: float, stop: EventType) -> None:
    """Busy `duty` of every 5 ms until `stop`."""
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < 0.005 * duty:
            pass
        time.sleep(0.005 * (1 - duty))


def images_per_s(engines: list[OpenVinoEngine], batch: int) -> float:
    """Every engine from its own thread, as many runs as fit in RUN_S."""
    x = np.random.default_rng(0).integers(0, 255, (batch, 320, 320, 3), dtype=np.uint8)
    for engine in engines:
        engine.infer_pixels(x)
    counts = [0] * len(engines)
    end = time.perf_counter() + RUN_S

    def loop(i: int) -> None:
        while time.perf_counter() < end:
            engines[i].infer_pixels(x)
            counts[i] += batch

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(engines))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    package = load_package(resolve_package("builtin:shapes_320_int8", Path.cwd()))

    def make(threads: int, pin: bool | None = None) -> OpenVinoEngine:
        return OpenVinoEngine(package, precision="int8", num_threads=threads, num_streams=1,
                              static_batch_sizes=[1, 2, 4, 8], pixel_input=True,
                              cpu_pinning=pin)

    sets = {"t2_default": [make(2)], "t2_pinF": [make(2, False)], "t2_pinT": [make(2, True)],
            "t1x2_pinF": [make(1, False), make(1, False)]}
    for duty in (0.0, 1.0):
        stop = mp.Event()
        busy = mp.Process(target=hog, args=(duty, stop)) if duty else None
        if busy is not None:
            busy.start()
        for rnd in range(ROUNDS):
            for name, engines in sets.items():
                b1, b8 = images_per_s(engines, 1), images_per_s(engines, 8)
                print(f"hog {duty:.1f} round {rnd} {name}: b1 {b1:.0f} img/s, b8 {b8:.0f} "
                      f"img/s, gain {b8 / b1:.2f}", flush=True)
        stop.set()
        if busy is not None:
            busy.join()


if __name__ == "__main__":
    main()
