"""The kill switch against a real broker and a real worker daemon: freezing the wallet,
or revoking the agent key that authorized the job, blocks new authorizations at once
and stops the running job within one reporting interval; its hold settles on the
usage the broker acknowledged."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from broker.client import BrokerClient, BrokerClientError
from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from worker.v1 import worker_service_pb2 as worker_pb
from worker.v1 import worker_service_pb2_grpc as worker_grpc

from .conftest import burn_job, rid, worker_world

INTERVAL_S = 1.0  # the broker's reporting interval (CoreConfig.report_interval_ms)
BURN_MS = 60_000  # the job would run a minute if nobody stopped it


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    with worker_world(tmp_path_factory.mktemp("kill-switch")) as world:
        yield world


class RunningJob:
    """A burn job in a thread; every event with the time it arrived."""

    def __init__(self, w, voucher: str):
        self.events: list[tuple[float, worker_pb.ExecuteResponse]] = []
        self.error: grpc.RpcError | None = None

        def run():
            with grpc.insecure_channel(w.worker.target) as ch:
                try:
                    for event in worker_grpc.WorkerServiceStub(ch).Execute(
                            worker_pb.ExecuteRequest(voucher=voucher, job=burn_job(BURN_MS)),
                            timeout=BURN_MS / 1000 + 30):
                        self.events.append((time.monotonic(), event))
                except grpc.RpcError as error:
                    self.error = error

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def wait_for_usage(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.WhichOneof("kind") == "usage" for _, e in self.events):
            assert self.thread.is_alive() and time.monotonic() < deadline, self.events
            time.sleep(0.02)

    def finish(self, timeout: float = 30.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the job was not stopped"
        assert self.error is None, self.error
        return self.events


def check_stopped(w, job: RunningJob, killed_at: float, authorization_id: str) -> None:
    events = job.finish()
    ended_at, last = events[-1]
    result = last.result
    assert result.status == worker_pb.JOB_STATUS_STOPPED, (result.status, result.error)
    # The next report after the kill gets STOP (at most one interval later), and the
    # worker stops within one more: generous slack for a loaded machine, far from the
    # minute the job would have run.
    assert ended_at - killed_at < 2 * INTERVAL_S + 4, ended_at - killed_at
    reports_after = [e for t, e in events if t > killed_at and e.WhichOneof("kind") == "usage"]
    assert len(reports_after) <= 2, len(reports_after)
    receipt = result.receipt
    # The worker's copy of the receipt never names the authorization (docs/privacy.md).
    assert receipt.outcome == "STOPPED" and receipt.authorization_id == ""
    # Settled on what the broker acknowledged: the last report plus the stop's interval.
    last_ack = [e.usage for _, e in events if e.WhichOneof("kind") == "usage"][-1]
    assert last_ack.charged <= receipt.charged < receipt.held
    settled = w.wait_settled(authorization_id)
    assert (settled.receipt_id, settled.charged) == (receipt.receipt_id, receipt.charged)
    assert w.violations() == []


def test_freezing_the_wallet_stops_the_running_job(w):
    auth = w.authorize(2_000_000)
    job = RunningJob(w, auth.voucher)
    job.wait_for_usage()
    killed_at = time.monotonic()
    w.h.owner.wallets.FreezeWallet(wallet_pb.FreezeWalletRequest(
        request_id=rid(), wallet_id=w.h.wallet_id))
    with pytest.raises(BrokerClientError) as caught:  # new authorizations: refused at once
        w.agent.authorize(1000)
    assert caught.value.reason == "WALLET_FROZEN"
    check_stopped(w, job, killed_at, auth.authorization_id)
    w.h.owner.wallets.UnfreezeWallet(wallet_pb.UnfreezeWalletRequest(
        request_id=rid(), wallet_id=w.h.wallet_id))


def test_revoking_the_agent_key_stops_its_running_job(w):
    created = w.h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=w.h.owner_id,
        wallet_id=w.h.wallet_id))
    with BrokerClient(w.broker.target, created.api_key) as stolen:
        auth = w.authorize(2_000_000, client=stolen)
        job = RunningJob(w, auth.voucher)
        job.wait_for_usage()
        killed_at = time.monotonic()
        w.h.admin.admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(
            request_id=rid(), key_id=created.key_id))
        with pytest.raises(BrokerClientError) as caught:
            stolen.authorize(1000)
        assert caught.value.reason == "API_KEY_REVOKED"
        check_stopped(w, job, killed_at, auth.authorization_id)
    # The wallet's other agent key is untouched.
    assert w.agent.authorize(1000, ttl_seconds=60).voucher
