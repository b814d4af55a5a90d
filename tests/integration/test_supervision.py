"""Issue 18 item 5: background tasks never die silently. The worker's heartbeat
survives a failed re-registration, counts it and retries; it exits non-zero when the
broker refuses its key for good. One failing step of the broker's sweep does not skip
the others."""

from __future__ import annotations

import grpc

from broker.store import LmdbStore
from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb
from broker.v1 import worker_registry_service_pb2_grpc as registry_grpc

from .broker_process import BrokerProcess
from .capture_proxy import CapturingProxy
from .conftest import Harness, bearer, rid
from .spend_helpers import wait_until
from .test_metrics import Scrape
from .worker_process import WorkerProcess

REGISTER = "/broker.v1.WorkerRegistryService/RegisterWorker"


def _failures(url: str, family: str, task: str) -> float:
    scrape = Scrape(url)
    found = scrape.families.get(family)
    return sum(s.value for s in found.samples if s.name == family + "_total"
               and s.labels.get("task") == task) if found else 0


def test_worker_heartbeat_outlives_a_failed_re_registration_and_exits_on_a_refused_key(
        tmp_path):
    # A 3 s lease: the worker heartbeats every second.
    broker = BrokerProcess(tmp_path / "broker", extra_args=("--worker-lease-ms", "3000")).start()
    proxy = CapturingProxy(broker.target).start()  # between the worker and the broker
    channel = grpc.insecure_channel(broker.target)
    admin = Harness(broker, channel).admin.admin
    creds = broker.credentials
    key = admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_WORKER, provider_id=creds["provider_id"]))
    worker = WorkerProcess(proxy.target, tmp_path / "worker", key.api_key,
                           creds["agent_api_key"])
    try:
        worker.start()
        with channel:
            registry = registry_grpc.WorkerRegistryServiceStub(channel)
            # The broker forgets the worker as active, and its re-registration then fails
            # with UNAVAILABLE: the task that used to die there for good.
            proxy.refuse[REGISTER] = grpc.StatusCode.UNAVAILABLE
            registry.DeregisterWorker(registry_pb.DeregisterWorkerRequest(
                request_id=rid(), worker_id=worker.worker_id),
                metadata=bearer(key.api_key))
            wait_until(lambda: _failures(worker.metrics_url,
                                         "worker_background_task_failures", "register") >= 2,
                       what="two failed re-registrations, counted")
            assert worker.worker_id not in worker.offered_ids()
            del proxy.refuse[REGISTER]
            wait_until(lambda: worker.worker_id in worker.offered_ids(), timeout=15,
                       what="the worker back in the offers")
            assert "register failed (UNAVAILABLE); retrying" in worker.log()
            assert "Task exception was never retrieved" not in worker.log()
            # A revoked key: no retry can help, so the worker drains and exits with 1.
            admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(request_id=rid(),
                                                            key_id=key.key_id))
            assert worker.wait(timeout=30) == 1
            assert "heartbeat cannot go on" in worker.log()
    finally:
        worker.stop()
        proxy.stop()
        broker.stop()


def test_a_failing_sweep_step_does_not_skip_the_others(tmp_path):
    broker = BrokerProcess(tmp_path / "broker").start()
    try:
        # Fault injection: a malformed approval timer (no such approval), written into the
        # live ledger from this process (LMDB serialises writers across processes). The
        # spend-control step, the first of each tick, now fails on every tick.
        with LmdbStore(broker.data_dir / "ledger", lock=False) as store:
            store.submit_sync(lambda tx: tx.put("approval_timers",
                                                f"{1:020d}/auth_missing/expire", {}))
        with grpc.insecure_channel(broker.target) as channel:
            h = Harness(broker, channel)
            held = h.agent.authorize(1000, ttl_seconds=1)
            # The hold's expiry is a later step of the same tick: it still runs.
            wait_until(lambda: h.agent.get_authorization(held.authorization_id).state ==
                       auth_pb.AUTHORIZATION_STATE_EXPIRED, timeout=15, what="the hold expired")
        assert _failures(broker.metrics_url, "broker_background_task_failures",
                         "sweep.spend_controls") >= 2
    finally:
        broker.stop()
    log = broker.log()
    # Logged with its traceback once when it started failing, not on every tick.
    assert log.count("sweep step spend_controls failed") == 1
    assert "Traceback" in log
