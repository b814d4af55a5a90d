"""A worker daemon meters all its jobs on one MeterWorker stream (issue 21): eight
concurrent jobs, a STOP among them, and a broker killed and restarted mid-batch."""

from __future__ import annotations

import threading
import time

from broker.v1 import authorization_service_pb2 as auth_pb
from common.money import charge_for
from worker.config import DEFAULT_PRICES
from worker.v1 import worker_service_pb2 as worker_pb

from .conftest import burn_job, usage_dict, worker_world
from .test_metrics import Scrape

JOBS = 8
METER_WORKER = {"grpc_service": "broker.v1.MeteringService", "grpc_method": "MeterWorker"}


def run_jobs(w, auths, duration_ms: int) -> list:
    runs: list = [None] * len(auths)

    def one(i: int) -> None:
        runs[i] = w.execute(auths[i].voucher, burn_job(duration_ms), timeout=90)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(auths))]
    for t in threads:
        t.start()
    return threads, runs


def check_settled(w, auth, run) -> None:
    result = run.result
    receipt = w.agent.get_receipt(auth.authorization_id)
    assert w.state(auth.authorization_id).state == auth_pb.AUTHORIZATION_STATE_SETTLED
    usage = usage_dict(receipt.usage)
    assert usage == usage_dict(result.usage)  # settled on what the worker measured
    assert receipt.charged == min(charge_for(usage, DEFAULT_PRICES), auth.amount)
    assert receipt.released == receipt.held - receipt.charged


def test_eight_concurrent_jobs_share_one_stream_and_a_stop_reaches_its_job(tmp_path):
    with worker_world(tmp_path, {"max_concurrent_jobs": JOBS}) as w:
        # Seven jobs with room to spare; one whose hold lasts a tenth of a second of GPU
        # (eight jobs share this machine's cores, and each is billed only its own share).
        price = DEFAULT_PRICES["gpu_second_price"]
        auths = [w.authorize(400_000) for _ in range(JOBS - 1)]
        small = w.authorize(price // 10)
        threads, runs = run_jobs(w, [*auths, small], 3_000)
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        for auth, run in zip(auths, runs, strict=False):
            assert run.result.status == worker_pb.JOB_STATUS_COMPLETED, run.result.error
            assert run.usages, "no usage was acknowledged during the job"
            check_settled(w, auth, run)
        stopped = runs[-1]
        assert stopped.result.status == worker_pb.JOB_STATUS_STOPPED, stopped.result
        assert stopped.result.receipt.charged <= small.amount
        assert stopped.elapsed < 3.0  # stopped before the job's own end
        check_settled(w, small, stopped)
        broker = Scrape(w.broker.metrics_url)
        assert broker.value("grpc_server_started_total", **METER_WORKER) == 1  # one stream
        assert not [s for f in broker.families.values() for s in f.samples
                    if s.labels.get("grpc_method") == "Meter"]  # no per-session stream
        assert w.violations() == []


def test_broker_killed_mid_batch_every_job_resumes_and_settles(tmp_path):
    with worker_world(tmp_path, {"max_concurrent_jobs": JOBS}) as w:
        auths = [w.authorize(400_000) for _ in range(JOBS)]
        threads, runs = run_jobs(w, auths, 4_000)
        time.sleep(2.0)  # in the middle of the jobs, around a tick's batch
        w.broker.kill()
        time.sleep(0.5)
        w.restart_broker()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        for auth, run in zip(auths, runs, strict=True):
            assert run.result.status == worker_pb.JOB_STATUS_COMPLETED, run.result.error
            check_settled(w, auth, run)
            # It ran its whole course through the outage, and what it measured meanwhile
            # counts: never less than what was acknowledged before (check_settled: the
            # charge is the final usage's).
            assert run.elapsed >= 4.0
            acked = max((u.usage.gpu_ms for u in run.usages), default=0)
            assert usage_dict(run.result.usage)["gpu_ms"] >= acked
        assert w.h.wallet().pending == 0
        assert w.violations() == []
