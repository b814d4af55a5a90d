"""Loaded as `sitecustomize` by the broker and worker that `scripts/soak.py --tracemalloc N`
starts (it puts this directory on their PYTHONPATH): from SOAK_TRACEMALLOC_EVERY_S seconds
after start (so that imports run at full speed: torch's take minutes when traced), traces
Python allocations with N frames and writes a snapshot every SOAK_TRACEMALLOC_EVERY_S
seconds to SOAK_TRACEMALLOC_DIR/<pid>-<seconds since start>.snap. Does nothing without
that variable. Only memory allocated by Python code is traced, not grpc's or LMDB's C
heap, and only what was allocated after tracing started."""

import os
import threading
import time
import tracemalloc

_DIR = os.environ.get("SOAK_TRACEMALLOC_DIR")


def _dump_forever(directory: str, frames: int, every_s: float) -> None:
    start = time.monotonic()
    time.sleep(every_s)
    tracemalloc.start(frames)
    while True:
        time.sleep(every_s)
        snapshot = tracemalloc.take_snapshot()
        name = f"{os.getpid()}-{time.monotonic() - start:07.0f}.snap"
        tmp = os.path.join(directory, name + ".tmp")
        snapshot.dump(tmp)
        os.replace(tmp, os.path.join(directory, name))


if _DIR:
    threading.Thread(target=_dump_forever, name="tracemalloc-snapshots", daemon=True,
                     args=(_DIR, int(os.environ.get("SOAK_TRACEMALLOC_FRAMES", "1")),
                           float(os.environ.get("SOAK_TRACEMALLOC_EVERY_S", "60")))).start()
