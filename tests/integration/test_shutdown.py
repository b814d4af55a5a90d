"""Graceful shutdown with real broker and worker processes: on SIGTERM (or SIGINT) the
broker turns NOT_SERVING, refuses new authorizations with SHUTTING_DOWN and a
RetryInfo, gives open metering sessions a grace period to finish, ends the rest (they
stay open and the worker resumes them on the restarted broker), flushes and exits 0.
The worker, on SIGTERM, settles a job that outlasts its own grace period."""

import signal
import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.datadir import DataDir
from broker.v1 import authorization_service_pb2 as auth_pb
from common.money import charge_for
from common.status import error_detail
from worker.config import DEFAULT_PRICES
from worker.v1 import worker_service_pb2 as worker_pb
from worker.v1 import worker_service_pb2_grpc as worker_grpc

from .conftest import (
    agents_copy,
    aio_channel,
    burn_job,
    check_error,
    open_session,
    run,
    stream_rpc_error,
    usage_dict,
    worker_world,
)
from .worker_process import WorkerProcess

SETTLED = auth_pb.AUTHORIZATION_STATE_SETTLED


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    with worker_world(tmp_path_factory.mktemp("shutdown")) as world:
        yield world


class Job:
    """One Execute stream in a thread; its events are visible as they arrive."""

    def __init__(self, w, voucher: str, job: worker_pb.Job, target: str | None = None):
        self.events: list = []
        self.error: grpc.RpcError | None = None
        self._args = (target or w.worker.target, voucher, job)
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        target, voucher, job = self._args
        try:
            with grpc.insecure_channel(target) as ch:
                for event in worker_grpc.WorkerServiceStub(ch).Execute(
                        worker_pb.ExecuteRequest(voucher=voucher, job=job), timeout=90):
                    self.events.append(event)
        except grpc.RpcError as error:
            self.error = error

    def acked(self) -> list:
        return [e.usage for e in self.events if e.WhichOneof("kind") == "usage"]

    def wait_acked(self, timeout: float = 30.0) -> None:
        """Until the broker has acknowledged some usage of the running job."""
        deadline = time.monotonic() + timeout
        while not self.acked():
            assert self._thread.is_alive(), f"the job ended: {self.kinds()} {self.error}"
            assert time.monotonic() < deadline, f"no usage acknowledged: {self.kinds()}"
            time.sleep(0.05)

    def kinds(self) -> list[str]:
        return [e.WhichOneof("kind") for e in self.events]

    def stopped(self, timeout: float = 60.0) -> grpc.RpcError:
        """The error the call ended with."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the job did not end"
        assert self.error is not None, "the call ended without an error"
        return self.error

    def result(self, timeout: float = 60.0) -> worker_pb.JobResult:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the job did not end"
        assert self.error is None, self.error
        assert self.events[-1].WhichOneof("kind") == "result"
        return self.events[-1].result


def wait_not_serving(target: str, timeout: float = 10.0) -> None:
    """Until the broker has taken the signal (it is handled asynchronously)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        while health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5) \
                .status != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "still SERVING after the signal"
            time.sleep(0.02)


def open_session_record(w, authorization_id: str) -> dict:
    """The session of an authorization, read from the stopped broker's LMDB directly."""
    store = DataDir(w.broker.data_dir).open_store()
    try:
        return store.read(lambda tx: tx.get(
            "sessions", tx.get("authorizations", authorization_id)["session_id"]))
    finally:
        store.close()


def start_with_grace(w, seconds: float) -> None:
    """Restart the broker (idle: it exits at once) with this shutdown grace period, and
    wait for the worker to be back (its heartbeat reaches the new broker)."""
    w.broker.extra_args = ("--shutdown-grace-seconds", str(seconds))
    w.restart_broker()
    deadline = time.monotonic() + 30
    while w.worker_id not in w.worker.offered_ids():
        assert time.monotonic() < deadline, "the worker did not come back"
        time.sleep(0.1)


def check_balanced(w, receipt, pending_before: int) -> None:
    assert receipt.charged + receipt.released == receipt.held
    assert receipt.worker_payout + receipt.platform_fee == receipt.charged
    assert w.h.wallet().pending == pending_before  # no hold of the test left behind
    assert w.violations() == []


def test_sigterm_mid_job_ends_the_stream_and_the_session_resumes_after_restart(w):
    start_with_grace(w, 8)
    pending = w.h.wallet().pending
    auth = w.authorize(1_000_000)
    spare = w.authorize(100_000)
    job = Job(w, auth.voucher, burn_job(15_000))
    job.wait_acked()
    sigterm = time.monotonic()
    w.broker.proc.send_signal(signal.SIGTERM)

    # During the grace period: not serving, no new holds (with a delay to retry after),
    # and reads still answered.
    wait_not_serving(w.broker.target)
    before = w.h.wallet()
    with pytest.raises(grpc.RpcError) as caught:
        w.h.agent.authorize(100_000)
    check_error(caught.value, grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    retry = error_detail(caught.value, error_details_pb2.RetryInfo)
    assert retry is not None and retry.retry_delay.ToMilliseconds() > 0
    assert w.h.wallet() == before  # nothing was held

    async def redeem_spare():
        async with aio_channel(w.broker.target) as ch, \
                stream_rpc_error(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"):
            await open_session(ch, w.creds["worker_api_key"], spare.voucher, w.worker_id)

    run(redeem_spare())  # no new metering session either

    # The job outlasts the grace period: its stream is ended, the broker exits cleanly.
    assert w.broker.proc.wait(30) == 0
    assert time.monotonic() - sigterm >= 8
    assert "ending 1 metering stream(s)" in w.broker.log()
    acked = job.acked()[-1]
    assert acked.charged > 0
    # On disk: the session is still open, with everything acknowledged before the end.
    ses = open_session_record(w, auth.authorization_id)
    assert ses["state"] == "open" and not ses["stop_reason"]
    assert ses["charged"] >= acked.charged
    assert ses["usage"]["gpu_ms"] >= acked.usage.gpu_ms

    # Restarted on the same data dir: the worker resumes the session, the job completes
    # and settles on everything measured, the time the broker was away included.
    w.restart_broker()
    assert w.state(spare.authorization_id).state == auth_pb.AUTHORIZATION_STATE_HELD
    w.agent.cancel(spare.authorization_id)
    result = job.result()
    assert result.status == worker_pb.JOB_STATUS_COMPLETED, result.error
    receipt = result.receipt
    assert receipt.receipt_id == w.state(auth.authorization_id).receipt_id
    assert receipt.outcome == "FINISHED"
    usage = usage_dict(receipt.usage)
    assert usage == usage_dict(result.usage)
    # The work done while the broker was away counts.
    assert usage["gpu_ms"] > ses["usage"]["gpu_ms"]
    assert receipt.charged == charge_for(usage, DEFAULT_PRICES) > ses["charged"]
    assert receipt.held == 1_000_000
    assert w.state(auth.authorization_id).state == SETTLED
    check_balanced(w, receipt, pending)
    w.check_log_privacy()


def test_sigint_lets_a_session_finish_within_the_grace_period(w):
    start_with_grace(w, 20)
    pending = w.h.wallet().pending
    auth = w.authorize(1_000_000)
    job = Job(w, auth.voucher, burn_job(4_000))
    job.wait_acked()
    cuts = w.broker.log().count("grace period over")
    w.broker.proc.send_signal(signal.SIGINT)
    # The session finishes and settles on the draining broker, which then exits at once.
    result = job.result()
    assert w.broker.proc.wait(15) == 0
    assert w.broker.log().count("grace period over") == cuts
    assert result.status == worker_pb.JOB_STATUS_COMPLETED, result.error
    assert result.receipt.outcome == "FINISHED"
    assert result.receipt.charged == charge_for(usage_dict(result.usage), DEFAULT_PRICES)
    w.restart_broker()
    assert w.state(auth.authorization_id).state == SETTLED
    assert w.agent.get_receipt(auth.authorization_id) == agents_copy(result.receipt,
                                                                      auth)
    check_balanced(w, result.receipt, pending)


def test_worker_sigterm_settles_a_job_that_outlasts_its_grace_period(w, tmp_path):
    creds = w.creds
    worker = WorkerProcess(w.broker.target, tmp_path / "short-grace", creds["worker_api_key"],
                           creds["agent_api_key"],
                           extra_args=("--shutdown-grace-seconds", "1")).start()
    try:
        pending = w.h.wallet().pending
        auth = w.authorize(1_000_000, worker_id=worker.worker_id)
        job = Job(w, auth.voucher, burn_job(30_000), target=worker.target)
        job.wait_acked()
        worker.terminate()
        assert worker.wait(20) == 0
        # The job was cancelled (the agent's call ends) and its measured usage settled
        # before the worker exited, not left to the hold's expiry.
        assert job.stopped(10).code() == grpc.StatusCode.UNAVAILABLE
        assert w.state(auth.authorization_id).state == SETTLED
        receipt = w.agent.get_receipt(auth.authorization_id)
        assert 0 < usage_dict(receipt.usage)["gpu_ms"] < 30_000
        assert receipt.charged == charge_for(usage_dict(receipt.usage), DEFAULT_PRICES)
        assert worker.worker_id not in worker.offered_ids()
        check_balanced(w, receipt, pending)
        w.check_log_privacy(worker)
    finally:
        if worker.alive():
            worker.kill()
