"""A tampered journal is detected: one byte of one entry is flipped in the real LMDB
directory of a stopped broker; `broker audit`, the Audit RPC and the daemon's periodic
audit each name the entry."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import lmdb

from broker.v1 import policy_service_pb2 as pol_pb

from .broker_process import ROOT, BrokerProcess
from .conftest import Client, Harness
from .spend_helpers import policy, wait_until


def audit_cli(data_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", "audit", "--data-dir",
                           str(data_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def flip_one_byte(ledger_dir, kind: str, field: str) -> int:
    """Change one digit of `field` in the first journal entry of `kind`; its seq."""
    env = lmdb.open(str(ledger_dir), max_dbs=64)
    try:
        db = env.open_db(b"journal")
        with env.begin(write=True, db=db) as txn:
            for key, raw in txn.cursor():
                entry = json.loads(raw)
                if entry["kind"] != kind:
                    continue
                at = raw.index(f'"{field}":'.encode()) + len(field) + 3
                digit = raw[at:at + 1]
                assert digit.isdigit()
                flipped = raw[:at] + (b"1" if digit != b"1" else b"2") + raw[at + 1:]
                assert len(flipped) == len(raw) and sum(a != b for a, b in zip(
                    flipped, raw, strict=True)) == 1
                txn.put(key, flipped)
                return entry["seq"]
        raise AssertionError(f"no {kind} entry")
    finally:
        env.close()


def test_a_flipped_byte_in_the_journal_is_detected(tmp_path):
    broker = BrokerProcess(tmp_path / "data", extra_args=("--audit-interval-seconds", "0.5"))
    broker.start()
    with grpc.insecure_channel(broker.target) as channel:
        h = Harness(broker, channel)
        assert policy(h, h.admin).Audit(pol_pb.AuditRequest()).ok
    broker.stop()
    first = audit_cli(broker.data_dir)
    assert (first.returncode, first.stdout.strip()) == (0, "ledger OK"), first

    seq = flip_one_byte(broker.data_dir / "ledger", "wallet_funded", "amount")
    found = audit_cli(broker.data_dir)
    assert found.returncode == 1, found
    problem = f"journal entry {seq} (wallet_funded, "
    lines = found.stdout.splitlines()
    assert [line for line in lines if line.startswith("journal")] == [
        line for line in lines if line.startswith(problem)
        and line.endswith("its content does not match its hash (altered after it was written)")]
    assert lines[-1] == "1 problem(s) found"

    broker.start()  # a tampered journal does not stop the broker; it is reported
    try:
        with grpc.insecure_channel(broker.target) as channel:
            h = Harness(broker, channel)
            audit = policy(h, h.admin).Audit(pol_pb.AuditRequest())
            assert not audit.ok
            assert [p for p in audit.problems if p.startswith(problem)] == list(audit.problems)
            assert list(h.summary().violations) == list(audit.problems)

            def alert():
                listed = policy(h, h.admin).ListAlerts(pol_pb.ListAlertsRequest()).alerts
                return [a for a in listed if a.kind == pol_pb.ALERT_KIND_AUDIT_FAILED]

            alerts = wait_until(alert, what="the periodic audit's alert")
            assert len(alerts) == 1 and problem in alerts[0].message
            assert alerts[0].owner_id == ""  # ledger-wide: not shown to any tenant
            owner = Client(channel, h.creds["owner_api_key"])
            assert not policy(h, owner).ListAlerts(pol_pb.ListAlertsRequest()).alerts
    finally:
        broker.stop()
    assert "audit: journal entry" in broker.log()


def test_a_corrupted_entry_is_reported_not_crashed_on(tmp_path):
    broker = BrokerProcess(tmp_path / "data").start()
    broker.stop()
    env = lmdb.open(str(broker.data_dir / "ledger"), max_dbs=64)
    with env.begin(write=True, db=env.open_db(b"journal")) as txn:
        raw = txn.get(b"%020d" % 2)
        txn.put(b"%020d" % 2, b"\xff" + raw[1:])  # no longer JSON
    env.close()
    found = audit_cli(broker.data_dir)
    assert found.returncode == 1
    assert "journal entry 2: its stored bytes are not valid JSON (altered or corrupted on disk)" \
        in found.stdout.splitlines()
