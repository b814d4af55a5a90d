"""A real broker, a CapturingProxy in front of it, and a real worker daemon that reaches
the broker only through the proxy: for tests that watch or break the worker's link."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from .broker_process import BrokerProcess
from .capture_proxy import CapturingProxy
from .conftest import WorkerWorld
from .worker_process import WorkerProcess


@contextlib.contextmanager
def proxied_worker_world(directory: Path, config: dict | None = None
                         ) -> Iterator[tuple[WorkerWorld, CapturingProxy]]:
    """(the world, the proxy); `config`: the worker's settings."""
    broker = BrokerProcess(directory / "broker").start()
    proxy = CapturingProxy(broker.target).start()
    creds = broker.credentials
    worker = WorkerProcess(proxy.target, directory / "worker", creds["worker_api_key"],
                           creds["agent_api_key"], config=config)
    try:
        worker.start()
        world = WorkerWorld(broker, worker)
        yield world, proxy
        world.close()
    finally:
        try:
            worker.stop()
        finally:
            proxy.stop()
            broker.stop()
