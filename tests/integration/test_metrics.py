"""Prometheus endpoints of a real broker and worker: after a full job cycle (and
during one), every metric family in docs/operations.md is there with plausible values."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from broker.client import BrokerClientError
from worker.v1 import worker_service_pb2 as worker_pb

from .broker_process import ROOT, BrokerProcess, free_port
from .conftest import burn_job, generate_job, worker_world


class Scrape:
    """One GET /metrics, parsed."""

    def __init__(self, url: str):
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain")
            text = reply.read().decode()
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def has(self, family: str) -> bool:
        return family in self.families

    def value(self, sample: str, **labels: str) -> float:
        """The sum of the samples named `sample` whose labels include `labels`."""
        found = [s.value for family in self.families.values() for s in family.samples
                 if s.name == sample and labels.items() <= s.labels.items()]
        assert found, f"no {sample}{labels}"
        return sum(found)


AUTHORIZE = {"grpc_service": "broker.v1.AuthorizationService", "grpc_method": "Authorize"}
# The worker meters all its jobs on one MeterWorker stream (issue 21).
METER = {"grpc_service": "broker.v1.MeteringService", "grpc_method": "MeterWorker"}
EXECUTE = {"grpc_service": "worker.v1.WorkerService", "grpc_method": "Execute"}


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_metrics_during_and_after_a_full_cycle(tmp_path):
    with worker_world(tmp_path) as w:
        before = Scrape(w.broker.metrics_url)
        assert before.value("broker_metering_sessions_open") == 0

        # During a job: one open session on the broker, one running job on the worker.
        auth = w.authorize(1_000_000)
        results: list = []
        job = threading.Thread(target=lambda: results.append(
            w.execute(auth.voucher, burn_job(3_000))))
        job.start()
        try:
            assert wait_for(lambda: Scrape(w.broker.metrics_url).value(
                "broker_metering_sessions_open") == 1), "the session never showed as open"
            during = Scrape(w.broker.metrics_url)
            assert during.value("broker_holds_pending") == 1
            assert during.value("broker_holds_pending_amount") == 1_000_000
            assert during.value("grpc_server_in_flight", **METER) == 1
            assert Scrape(w.worker.metrics_url).value("worker_jobs_running") == 1
        finally:
            job.join(60)
        assert results and results[0].result.status == worker_pb.JOB_STATUS_COMPLETED
        first = w.wait_settled(auth.authorization_id)

        # A second job, a refused authorization, and a hold left pending.
        second = w.authorize(500_000)
        assert w.execute(second.voucher, generate_job(max_new_tokens=8)).result.status == \
            worker_pb.JOB_STATUS_COMPLETED
        receipt = w.wait_settled(second.authorization_id)
        with pytest.raises(BrokerClientError, match="INSUFFICIENT_FUNDS"):
            w.authorize(10**12)
        w.authorize(123_456)

        broker, worker = Scrape(w.broker.metrics_url), Scrape(w.worker.metrics_url)

    # RPCs by method and code, with latency.
    assert broker.value("grpc_server_handled_total", **AUTHORIZE, grpc_code="OK") == 3
    assert broker.value("grpc_server_handled_total", **AUTHORIZE,
                        grpc_code="FAILED_PRECONDITION") == 1
    assert broker.value("grpc_server_started_total", **AUTHORIZE) == 4
    assert broker.value("grpc_server_handling_seconds_count", **AUTHORIZE) == 4
    assert broker.value("grpc_server_handling_seconds_sum", **AUTHORIZE) > 0
    # Both jobs on one stream, which stays open for the next.
    assert broker.value("grpc_server_started_total", grpc_type="bidi_stream", **METER) == 1
    assert broker.value("grpc_server_in_flight", **METER) == 1
    # The ledger writer: batch sizes and commit (fsync) latency.
    assert broker.value("broker_ledger_commit_batch_size_count") >= 10
    assert broker.value("broker_ledger_commit_batch_size_sum") >= \
        broker.value("broker_ledger_commit_batch_size_count")
    assert broker.value("broker_ledger_commit_seconds_count") >= 10
    assert broker.value("broker_ledger_commit_seconds_sum") > 0
    assert broker.value("broker_ledger_commit_failures_total") == 0
    # Holds, sessions, spend and settlements.
    assert broker.value("broker_holds_pending") == 1
    assert broker.value("broker_holds_pending_amount") == 123_456
    assert broker.value("broker_metering_sessions_open") == 0
    assert broker.value("broker_settlements_total") == 2
    assert broker.value("broker_settlements_total", outcome=receipt.outcome) >= 1
    charged = first.charged + receipt.charged
    assert charged > 0
    assert broker.value("broker_spend_total") == charged
    assert broker.value("broker_platform_fees_total") == first.platform_fee + receipt.platform_fee
    assert broker.value("broker_worker_payouts_total") == \
        first.worker_payout + receipt.worker_payout
    assert broker.value("broker_authorized_amount_total") == 1_000_000 + 500_000 + 123_456
    assert broker.value("broker_journal_entries_total", kind="session_settled") == 2
    assert broker.has("broker_alerts")  # declared; nothing raises alerts yet
    # What the broker keeps in memory, and the bounds (docs/reliability.md, "Memory").
    assert broker.value("broker_memory_table_entries", table="worker_leases") == 1
    # The worker's one metering stream (it stays open between jobs).
    assert broker.value("broker_memory_table_entries", table="metering_streams") == 1
    assert broker.value("broker_memory_table_entries", table="watch_streams") == 0
    assert broker.value("broker_memory_table_limit", table="rate_buckets") == 10_000
    handlers = broker.value("broker_memory_table_entries", table="rpc_handlers")
    assert 3 <= handlers <= broker.value("broker_memory_table_limit", table="rpc_handlers")
    assert worker.value("worker_result_cache_limit") == 10_000

    # The worker: RPCs, jobs, usage reports, device time, energy, GPU.
    assert worker.value("grpc_server_handled_total", **EXECUTE, grpc_code="OK") == 2
    assert worker.value("worker_jobs_total", outcome="completed") == 2
    assert worker.value("worker_jobs_running") == 0
    assert worker.value("worker_usage_reports_total", result="acked") >= 2  # in the burn
    meter = "cuda_events" if torch.cuda.is_available() else "cpu_time"
    assert worker.value("worker_info", meter=meter) == 1
    # What the meter measured is what was settled.
    gpu_ms = first.usage.gpu_ms + receipt.usage.gpu_ms
    assert gpu_ms > 0
    assert worker.value("worker_device_seconds_total", meter=meter) == \
        pytest.approx(gpu_ms / 1000)
    assert worker.value("worker_energy_joules_total", meter=meter) == \
        pytest.approx((first.usage.energy_mj + receipt.usage.energy_mj) / 1000)
    assert worker.has("worker_gpu_utilization_ratio")
    gpu_samples = worker.families["worker_gpu_utilization_ratio"].samples
    if torch.cuda.is_available():
        assert gpu_samples and all(0 <= s.value <= 1 for s in gpu_samples)
    else:
        assert gpu_samples == []  # no GPU: no reading rather than a made-up 0


def test_metrics_can_be_turned_off(tmp_path):
    broker = BrokerProcess(tmp_path / "data", extra_args=("--metrics-listen", "")).start()
    try:
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(broker.metrics_url, timeout=5)
        assert "metrics on" not in broker.log()
    finally:
        assert broker.stop() == 0


def test_a_busy_metrics_port_is_refused_clearly(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "broker.cli", "serve", "--data-dir", str(tmp_path / "d"),
             "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{port}",
             "--demo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in output
    assert "Traceback" not in output
