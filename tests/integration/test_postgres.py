"""Real broker processes on a real PostgreSQL (`broker serve --store postgresql://…`):
init, serving, several brokers on one database, bad input at start, the database lost
and back."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2

from broker.v1 import authorization_service_pb2 as auth_pb
from common.status import error_detail, error_info
from tests import pg_cluster

from .broker_process import ROOT, BrokerProcess
from .conftest import Harness, rid


def broker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def harness(broker: BrokerProcess) -> tuple[Harness, grpc.Channel]:
    channel = grpc.insecure_channel(broker.target)
    return Harness(broker, channel), channel


def test_two_brokers_on_one_database_serve_the_same_ledger(tmp_path: Path, pg_url: str):
    keys = tmp_path / "data"  # the key directory both brokers mount
    a = BrokerProcess(keys, extra_args=("--store", pg_url)).start()
    b = BrokerProcess(keys, extra_args=("--store", pg_url))
    b.log_path = tmp_path / "b.log"
    b.start()
    try:
        ha, ca = harness(a)
        hb, cb = harness(b)
        before = ha.wallet().available
        made = ha.agent.authorize(100_000)
        # The other broker sees it, verifies its voucher's key and cancels it once.
        assert hb.agent.get_authorization(made.authorization_id).amount == 100_000
        assert hb.wallet().available == before - 100_000
        hb.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
            request_id=rid(), authorization_id=made.authorization_id))
        assert ha.wallet().available == before
        # The same request_id on either broker gets the one answer.
        request_id = rid()
        first = ha.agent.authorize(50_000, request_id=request_id)
        again = hb.agent.authorize(50_000, request_id=request_id)
        assert again.authorization_id == first.authorization_id
        assert ha.summary().violations == [] and hb.summary().violations == []
        ca.close()
        cb.close()
    finally:
        a.stop()
        b.stop()
    # Nothing lived only in a broker: a fresh one on the same database has it all.
    c = BrokerProcess(keys, extra_args=("--store", pg_url))
    c.log_path = tmp_path / "c.log"
    c.start()
    try:
        hc, cc = harness(c)
        assert hc.agent.get_authorization(first.authorization_id).amount == 50_000
        assert hc.summary().violations == []
        cc.close()
    finally:
        c.stop()


def test_init_then_serve_and_migrate_and_audit(tmp_path: Path, pg_url: str):
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a database without tables
        conn.execute("DROP TABLE broker_layout")
    done = broker_cli("init", "--data-dir", str(tmp_path / "d"), "--store", pg_url)
    assert done.returncode == 0, done.stderr
    assert "ledger in postgresql://" in done.stdout
    again = broker_cli("init", "--data-dir", str(tmp_path / "d"), "--store", pg_url)
    assert again.returncode == 1 and "already initialised" in again.stderr
    migrated = broker_cli("migrate", "--data-dir", str(tmp_path / "d"), "--store", pg_url)
    assert migrated.returncode == 0 and "already at schema version" in migrated.stdout
    audited = broker_cli("audit", "--data-dir", str(tmp_path / "d"), "--store", pg_url)
    assert audited.returncode == 0 and "ledger OK" in audited.stdout


def _rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 't\\_%'")]
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)


@pytest.mark.parametrize("case", ["unreachable", "newer layout", "newer records"])
def test_a_bad_store_at_start_is_one_line_and_exit_2(tmp_path: Path, pg_url: str, case: str):
    url = pg_url
    if case == "unreachable":  # a server that is down: nothing listens on that socket
        url = f"postgresql://broker:hunter2@/broker?host={tmp_path}&port=5999"
    elif case == "newer layout":
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE broker_layout SET version = version + 1")
    else:
        assert broker_cli("init", "--data-dir", str(tmp_path / "i"), "--store", pg_url
                          ).returncode == 0
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE t_meta SET v = '{\"version\":99}' WHERE k = 'schema_version'")
    before = None if case == "unreachable" else _rows(url)
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen", "127.0.0.1:0", "--metrics-listen", "", "--store", url, "--demo"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "hunter2" not in done.stderr
    assert {"unreachable": "cannot connect to PostgreSQL",
            "newer layout": "written by a newer release",
            "newer records": "written by a newer release"}[case] in lines[0]
    if before is not None:
        assert _rows(url) == before  # nothing written
    assert not (tmp_path / "d").exists()


def test_database_restart_gives_unavailable_with_retry_info_then_recovers(tmp_path: Path):
    """Its own cluster: this test stops it."""
    cluster = pg_cluster.PgCluster().start()
    try:
        url = cluster.create_database("broker")
        broker = BrokerProcess(tmp_path / "data", extra_args=("--store", url)).start()
        try:
            h, channel = harness(broker)
            h.agent.authorize(10_000)
            cluster.stop("fast")
            request_id = rid()
            with pytest.raises(grpc.RpcError) as caught:
                h.agent.authorize(20_000, request_id=request_id)
            error = caught.value
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(error).reason == "STORE_UNAVAILABLE"
            retry = error_detail(error, error_details_pb2.RetryInfo)
            assert retry is not None and retry.retry_delay.ToMilliseconds() > 0
            cluster.start()
            deadline = time.monotonic() + 20
            while True:  # the broker reconnects by itself; the same request_id succeeds
                try:
                    made = h.agent.authorize(20_000, request_id=request_id)
                    break
                except grpc.RpcError as again:
                    assert again.code() == grpc.StatusCode.UNAVAILABLE, again
                    assert time.monotonic() < deadline, "the broker did not recover"
                    time.sleep(0.2)
            assert h.agent.authorize(20_000, request_id=request_id).authorization_id == \
                made.authorization_id
            assert h.summary().violations == []
            channel.close()
        finally:
            broker.stop()
    finally:
        cluster.destroy()
