"""A data directory written by the release before typed, versioned records
(tests/fixtures/datadir_v0, made by tests/fixtures/make_v0_datadir.py on that release)
is refused by `broker serve` until `broker migrate` brings it up to date; after that
every record reads as its declared type, every receipt still verifies, every balance is
what it was, its refund is indexed for statements, the audit is clean and new operations
continue the ledger and journal."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from broker.core import audit, journal, ledger, metering, statements, tenancy
from broker.core.access import Principal
from broker.core.config import CoreConfig
from broker.datadir import DataDir
from broker.keyring import Keyring
from broker.store import TABLES, records, schema
from common import sealing, usage_signing

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "datadir_v0"
SUMMARY = json.loads((ROOT / "tests" / "fixtures" / "datadir_v0.json").read_text())
BALANCE_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    shutil.copytree(FIXTURE, tmp_path / "data")
    return DataDir(tmp_path / "data")


def broker_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def version(data_dir: DataDir) -> int:
    store = data_dir.open_store()
    try:
        return store.read(schema.stored_version)
    finally:
        store.close()


def everything(data_dir: DataDir) -> dict:
    """Every key and stored value, raw (a damaged record too), of the tables holding any
    (opening the store creates this release's new tables, empty)."""
    import lmdb

    env = lmdb.open(str(data_dir.ledger), max_dbs=len(TABLES), readonly=True)
    try:
        with env.begin() as txn:
            names = [name for name, _ in txn.cursor()]  # the tables that exist
            tables = {n: list(txn.cursor(db=env.open_db(n, txn=txn))) for n in names}
            return {n: rows for n, rows in tables.items() if rows}
    finally:
        env.close()


def test_serve_refuses_an_old_data_directory_until_it_is_migrated(data_dir: DataDir):
    served = broker_cli("serve", "--data-dir", str(data_dir.root), "--listen", "127.0.0.1:0")
    assert served.returncode == 2
    lines = [line for line in served.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "schema version 0" in lines[0], served.stderr
    assert f"broker migrate --data-dir {data_dir.root}" in lines[0]
    assert version(data_dir) == 0  # refusing changed nothing

    migrated = broker_cli("migrate", "--data-dir", str(data_dir.root))
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated from schema version 0 to 2" in migrated.stdout
    assert version(data_dir) == records.SCHEMA_VERSION == 2
    again = broker_cli("migrate", "--data-dir", str(data_dir.root))
    assert again.returncode == 0 and "already at schema version 2" in again.stdout


def test_after_migration_everything_reads_verifies_and_balances(data_dir: DataDir):
    store = data_dir.open_store()
    try:
        assert store.submit_sync(lambda tx: schema.migrate(tx, "d")) == (0, 2)
        # Every record of every table reads, as its declared type.
        counts = store.read(lambda tx: {t: sum(1 for _ in tx.scan(t)) for t in TABLES})
        for table in TABLES:
            for _, value in store.read(lambda tx, t=table: list(tx.scan(t))):
                records.check(table, value)
        assert counts["receipts"] == 3 and counts["grants"] == 1 and counts["policies"] == 2
        assert store.read(lambda tx: [k for k, _ in tx.scan("meta")]) == [
            "journal_head", "schema_version"]  # the old counters are gone

        # Every receipt verifies with the receipt keys; sealed ones open with the owner's.
        verify_keys = Keyring(data_dir.receipt_keys).verify_keys(include_retired=True)
        owner_key = sealing.load_private_key((data_dir.root / "owner_a_receipt.key")
                                             .read_text())
        receipts = store.read(lambda tx: [r for _, r in tx.scan("receipts")])
        for receipt in receipts:
            verify_keys[receipt["key_id"]].verify(base64.b64decode(receipt["signed_payload"]),
                                                  base64.b64decode(receipt["signature"]))
            outward = json.loads(base64.b64decode(receipt["signed_payload"]))
            assert outward["charged"] == receipt["charged"]
        sealed = [r for r in receipts if r["sealed"]]
        assert len(sealed) == 2
        for receipt in sealed:
            itemised = sealing.open_document(owner_key, base64.b64decode(receipt["sealed"]),
                                             verify_keys)
            assert itemised["receipt_id"] == receipt["receipt_id"]

        # Every balance is what the old release left; the audit is clean.
        balances = store.read(lambda tx: {
            a: {k: ledger.get_account(tx, a)[k] for k in BALANCE_FIELDS}
            for a, _ in tx.scan("accounts")})
        assert balances == SUMMARY["balances"]
        assert store.read(audit.check) == []

        # The refund made before statements counted refunds is indexed for them (schema
        # version 2), under the period it was made in: owner B's statement and the
        # provider's payout statement show it.
        [refund] = store.read(lambda tx: [r for _, r in tx.scan("refunds")])
        receipt = next(r for r in receipts if r["receipt_id"] == refund["receipt_id"])
        hour = refund["refund_ms"] - refund["refund_ms"] % 3_600_000
        assert store.read(lambda tx: list(tx.scan("owner_refunds"))) == [(
            f"{receipt['owner_id']}/{hour:016d}/{refund['refund_id']}",
            {"wallet_id": receipt["wallet_id"], "payment_model": receipt["payment_model"],
             "amount": 1_000})]
        assert store.read(lambda tx: list(tx.scan("provider_refunds"))) == [(
            f"{receipt['provider_id']}/{hour:016d}/{refund['refund_id']}",
            {"amount": 1_000, "payout": refund["provider_refund"],
             "fee": refund["fee_refund"]})]
        config, signer = CoreConfig(fee_bps=250), Keyring(data_dir.receipt_keys).signer
        found = store.read(lambda tx: statements.owner_statement(
            tx, Principal("key_admin", "admin"), receipt["owner_id"], hour, hour + 1, 0,
            False, config, signer))
        assert (found["total_charged"], found["total_refunded"]) == (receipt["charged"], 1_000)
        payouts = store.read(lambda tx: statements.payout_statement(
            tx, Principal("key_admin", "admin"), receipt["provider_id"], hour, hour + 1, 0,
            config, signer))
        assert payouts["total_refunded_payout"] + payouts["total_refunded_fee"] == 1_000

        # New operations continue it: the open session settles (its worker's signed final
        # usage), the open hold expires, money comes in; the roll-up folds the platform
        # entries, and the journal's chain goes on from the old entries.
        now = SUMMARY["T0"] + 10_000
        session = store.read(lambda tx: tx.get("sessions", SUMMARY["open_session"]))
        worker_p = Principal("key_worker", "worker", provider_id=session["provider_id"])
        usage = {**session["usage"], "gpu_ms": session["usage"]["gpu_ms"] + 500}
        signature = SigningKey(b"\x09" * 32).sign(
            usage_signing.payload(session["session_id"], usage, final=True)).signature
        settled = store.submit_sync(lambda tx: metering.finish(
            tx, worker_p, session["session_id"], usage, now, config, signer, signature))
        assert settled["charged"] > 0
        assert store.submit_sync(lambda tx: metering.expire_due(
            tx, now + 7_200_000, config, signer)) == 1
        owner_id = SUMMARY["owners"][0]
        store.submit_sync(lambda tx: tenancy.credit_treasury(tx, owner_id, 1_000, now))
        assert store.submit_sync(ledger.roll_up) > 0
        assert store.read(audit.check) == []
        head = store.read(journal.head)
        assert head["seq"] > 36 and store.read(journal.verify_tx) == []
    finally:
        store.close()


def test_a_damaged_data_directory_is_not_migrated_and_not_changed(data_dir: DataDir):
    import lmdb

    env = lmdb.open(str(data_dir.ledger), max_dbs=len(TABLES))
    accounts = env.open_db(b"accounts")
    with env.begin(write=True, db=accounts) as txn:
        key, value = next(iter(txn.cursor()))
        record = json.loads(value)
        record["credits_posted"] = "lots"
        txn.put(key, json.dumps(record).encode())
    env.close()
    before = everything(data_dir)
    migrated = broker_cli("migrate", "--data-dir", str(data_dir.root))
    assert migrated.returncode == 1
    assert f"record accounts/{key.decode()} is damaged" in migrated.stderr
    assert "nothing was migrated" in migrated.stderr
    assert version(data_dir) == 0
    assert everything(data_dir) == before


def test_a_data_directory_from_a_newer_release_is_refused(data_dir: DataDir):
    store = data_dir.open_store()
    try:
        store.submit_sync(lambda tx: tx.put("meta", "schema_version", {"version": 99}))
        with pytest.raises(schema.SchemaError, match="newer release"):
            store.submit_sync(lambda tx: schema.migrate(tx, "d"))
        with pytest.raises(schema.SchemaError, match="newer release"):
            store.read(lambda tx: schema.require_current(tx, "d"))
    finally:
        store.close()
    served = broker_cli("serve", "--data-dir", str(data_dir.root), "--listen", "127.0.0.1:0")
    assert served.returncode == 2 and "newer release" in served.stderr
