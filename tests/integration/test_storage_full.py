"""Issue 18 item 4: a broker whose data directory is on a full file system (a small
tmpfs, mounted in a private mount namespace by `unshare`, so no privileges are needed)
refuses writes with UNAVAILABLE / STORAGE_FULL and RetryInfo, turns health NOT_SERVING
and exports it, keeps answering reads, and recovers on its own once space is freed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.status import error_detail

from .broker_process import BrokerProcess
from .conftest import Harness, check_error
from .spend_helpers import wait_until
from .test_metrics import Scrape

MOUNT = 'mount -t tmpfs -o size=16m tmpfs "$1" && shift && exec "$@"'


class TmpfsBroker(BrokerProcess):
    """A broker whose data directory is on its own 16 MiB tmpfs. This process sees that
    file system through /proc/<pid>/root (the broker's view of the mounts)."""

    def __init__(self, mount: Path):
        mount.mkdir()
        super().__init__(mount / "data", launcher=(
            "unshare", "--user", "--map-root-user", "--mount", "sh", "-c", MOUNT, "sh",
            str(mount)))
        self.inner = mount / "data"

    def view(self, path: Path) -> Path:
        """`path` (inside the tmpfs) as this process reaches it."""
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root") / path.relative_to("/")

    @property
    def credentials_path(self) -> Path:
        if self.proc is None:
            return self.inner / "demo-credentials.json"
        return self.view(self.inner / "demo-credentials.json")


def _fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    chunk = b"\0" * (1 << 16)
    with open(path, "wb") as filler:
        try:
            while True:
                filler.write(chunk)
                filler.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2).status


def test_full_disk_refuses_writes_with_storage_full_and_recovers_on_its_own(tmp_path):
    broker = TmpfsBroker(tmp_path / "mnt").start()
    try:
        with grpc.insecure_channel(broker.target) as channel:
            h = Harness(broker, channel)
            first = h.agent.authorize(1000)
            filler = broker.view(broker.inner.parent / "filler")
            _fill(filler)
            # Freed pages in the ledger file can take a few more writes; then one fails.
            refused = None
            for _ in range(2000):
                try:
                    h.agent.authorize(1)
                except grpc.RpcError as error:
                    refused = error
                    break
            assert refused is not None, "the ledger never ran out of room"
            check_error(refused, grpc.StatusCode.UNAVAILABLE, "STORAGE_FULL")
            retry = error_detail(refused, error_details_pb2.RetryInfo)
            assert retry is not None and retry.retry_delay.seconds >= 1
            SERVING, NOT_SERVING = (health_pb2.HealthCheckResponse.SERVING,
                                    health_pb2.HealthCheckResponse.NOT_SERVING)
            wait_until(lambda: _health(broker.target) == NOT_SERVING, timeout=10,
                       what="health NOT_SERVING")
            assert Scrape(broker.metrics_url).value("broker_storage_full") == 1
            assert h.agent.get_authorization(first.authorization_id)  # reads still work
            # Space is back: the broker notices by itself, no restart.
            os.remove(filler)
            wait_until(lambda: _health(broker.target) == SERVING, timeout=10,
                       what="health SERVING again")
            assert Scrape(broker.metrics_url).value("broker_storage_full") == 0
            h.agent.authorize(1000)
            assert not h.summary().violations
            assert "storage full" in broker.log()
            assert "internal error" not in broker.log()
    finally:
        assert broker.stop() == 0
