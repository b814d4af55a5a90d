"""Signing-key rotation and retirement on disk (broker/keyring.py), journaled through a
store, with a clock the test controls."""

from __future__ import annotations

import json
import stat

import pytest

from broker import keyring
from broker.core import authorizations, journal
from broker.keyring import Keyring
from broker.store import MemoryStore
from common import vouchers
from common.errors import BrokerError

T0 = 1_800_000_000_000
MAX_TTL = 86_400_000


def files_are_private(directory) -> None:
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def claims(vid: str = "vch_1") -> vouchers.VoucherClaims:
    return vouchers.VoucherClaims(voucher_id=vid, amount=5, scope={}, issued_ms=T0,
                                  expire_ms=T0 + MAX_TTL)


def test_voucher_key_rotation_then_retirement(tmp_path):
    directory = tmp_path / "keys" / "voucher"
    first = Keyring.create(directory)
    ring = Keyring(directory)
    store = MemoryStore(sealer=journal.seal)
    old_token = vouchers.issue(ring.signer, claims())

    rotated = store.submit_sync(lambda tx: keyring.rotate_voucher_key(tx, ring, T0, MAX_TTL))
    assert rotated["previous_key_id"] == first != rotated["key_id"] == ring.active_id
    retire = T0 + MAX_TTL + keyring.RETIRE_MARGIN_MS
    assert rotated["previous_retire_ms"] == retire
    new_token = vouchers.issue(ring.signer, claims("vch_2"))
    assert new_token.split(".")[1] == rotated["key_id"]
    # Both verify: the old voucher until it expires, the new one with the new key.
    for token in (old_token, new_token):
        vouchers.verify(token, ring.verify_keys(), T0 + 1)
    assert [(k.key_id, k.active, k.retire_ms) for k in ring.public_keys()] == [
        (rotated["key_id"], True, 0), (first, False, retire)]
    files_are_private(directory)
    # A broker restarted on the directory sees the same.
    assert Keyring(directory).public_keys() == ring.public_keys()

    # Not before its time...
    assert keyring.retire_voucher_keys(store, ring, retire - 1) == []
    assert first in ring.verify_keys()
    # ...then it retires: its seed is destroyed and it is no longer published.
    assert keyring.retire_voucher_keys(store, ring, retire) == [first]
    record = json.loads((directory / f"{first}.json").read_text())
    assert "seed" not in record and record["public_key"]
    assert first not in ring.verify_keys()
    assert [k.key_id for k in ring.public_keys()] == [rotated["key_id"]]
    assert [k.retired for k in ring.public_keys(include_retired=True)] == [False, True]
    with pytest.raises(BrokerError) as caught:
        ring.signer_for(first)
    assert caught.value.reason == "SIGNING_KEY_RETIRED"
    with pytest.raises(BrokerError) as caught:
        vouchers.verify(old_token, Keyring(directory).verify_keys(), retire)
    assert caught.value.reason == "VOUCHER_UNKNOWN_KEY"
    files_are_private(directory)

    entries = store.read(lambda tx: [e for _, e in tx.scan("journal")])
    assert [(e["kind"], e["data"].get("key_id")) for e in entries] == [
        ("voucher_key_rotated", rotated["key_id"]), ("voucher_key_retired", first)]
    assert store.read(journal.verify_tx) == []
    # Nothing secret went into the journal.
    seeds = [json.loads(p.read_text()).get("seed") for p in directory.glob("*.json")]
    assert all(seed not in json.dumps(entries) for seed in seeds if seed)


def test_a_retried_authorize_after_retirement_says_so(tmp_path):
    directory = tmp_path / "voucher"
    Keyring.create(directory)
    ring = Keyring(directory)
    record = {"voucher_id": "vch_1", "amount": 5, "scope": {}, "create_ms": T0,
              "expire_ms": T0 + 1000, "voucher_key_id": ring.active_id}
    old = ring.active_id
    ring.rotate(T0, T0 + 10)
    assert authorizations.voucher_token(record, ring.signer_for(old)).split(".")[1] == old
    ring.retire_due(T0 + 10)
    with pytest.raises(BrokerError) as caught:
        ring.signer_for(old)
    assert caught.value.reason == "SIGNING_KEY_RETIRED"


def test_receipt_key_rotation_destroys_the_old_private_key_at_once(tmp_path):
    directory = tmp_path / "receipt"
    ring = Keyring.open(directory)  # created on first use
    first = ring.active_id
    signed = ring.signer.sign(b"receipt")
    store = MemoryStore(sealer=journal.seal)
    result = store.submit_sync(lambda tx: keyring.rotate_receipt_key(tx, ring, T0))
    assert result == {"previous_key_id": first, "key_id": ring.active_id}
    assert "seed" not in json.loads((directory / f"{first}.json").read_text())
    # The old public key stays, so what it signed keeps verifying.
    listed = ring.public_keys(include_retired=True)
    assert [(k.key_id, k.active, k.retired) for k in listed] == [
        (ring.active_id, True, False), (first, False, True)]
    ring.verify_keys(include_retired=True)[first].verify(b"receipt", signed)
    assert Keyring.open(directory).active_id == ring.active_id
    files_are_private(directory)


def test_a_retirement_whose_transaction_runs_again_still_journals_once(tmp_path):
    """On PostgreSQL a transaction may run again after a serialisation failure: the first
    run's writes are gone, so the seeds must be too only once the entry is committed.
    And a second broker (or a second sweep after a crash before the seeds went) journals
    nothing more."""
    directory = tmp_path / "keys" / "voucher"
    first = Keyring.create(directory)
    ring = Keyring(directory)
    store = MemoryStore(sealer=journal.seal)
    store.submit_sync(lambda tx: keyring.rotate_voucher_key(tx, ring, T0, MAX_TTL))
    retire = T0 + MAX_TTL + keyring.RETIRE_MARGIN_MS

    class Conflict(Exception):
        pass

    def conflicting(tx):  # the first run: its transaction fails after the op ran
        keyring.journal_retirements(tx, ring, retire)
        raise Conflict

    with pytest.raises(Conflict):
        store.submit_sync(conflicting)
    assert first in ring.verify_keys()  # the seed is still there ...
    due = store.submit_sync(lambda tx: keyring.journal_retirements(tx, ring, retire))
    assert due == [first]  # ... so the run that commits finds the key due and journals it
    # Another broker sharing the key directory runs the same step before the seeds go.
    other = Keyring(directory)
    assert store.submit_sync(lambda tx: keyring.journal_retirements(tx, other, retire)) == \
        [first]
    assert keyring.finish_retirements(ring, due) == [first]
    assert first not in ring.verify_keys()
    other.reload()
    assert keyring.finish_retirements(other, [first]) == [first]  # idempotent
    assert "seed" not in json.loads((directory / f"{first}.json").read_text())
    entries = store.read(lambda tx: [e for _, e in tx.scan("journal")])
    assert [(e["kind"], e["data"].get("key_id")) for e in entries][1:] == [
        ("voucher_key_retired", first)]
    files_are_private(directory)


def test_a_rotation_whose_transaction_runs_again_rotates_once(tmp_path):
    """The key files are written by the first run of the op; a run after a failed
    transaction (a serialisation failure on PostgreSQL) journals that same rotation."""
    for purpose, rotate in (("voucher", lambda tx, ring, made: keyring.rotate_voucher_key(
            tx, ring, T0, MAX_TTL, made)), ("receipt", lambda tx, ring, made: (
                keyring.rotate_receipt_key(tx, ring, T0, made)))):
        directory = tmp_path / "keys" / purpose
        first = Keyring.create(directory)
        ring = Keyring(directory)
        store = MemoryStore(sealer=journal.seal)
        made: list = []

        def conflicting(tx, ring=ring, made=made, rotate=rotate):
            rotate(tx, ring, made)
            raise RuntimeError("could not serialize access")

        with pytest.raises(RuntimeError):
            store.submit_sync(conflicting)
        result = store.submit_sync(lambda tx, ring=ring, made=made, rotate=rotate: rotate(
            tx, ring, made))
        assert result["previous_key_id"] == first and result["key_id"] == ring.active_id
        assert len(ring.public_keys(include_retired=True)) == 2  # not three
        entries = store.read(lambda tx: [e for _, e in tx.scan("journal")])
        assert [e["data"]["key_id"] for e in entries] == [result["key_id"]]
