"""The broker's Ed25519 keys on disk: <data dir>/keys/<purpose>/<key id>.json (0600).

Two keyrings: `voucher` keys sign vouchers, `receipt` keys sign receipts and
statements. In each, the active key signs. A key id is derived from the public key,
so a worker can cache keys by id and fetch the list again only when it meets an
unknown id.

Rotation makes a new key active under a new key id. A rotated-out voucher key keeps
verifying the vouchers issued under it until its retire time, when every one of them
has expired; then it retires: its private seed is destroyed and it is no longer
published. A rotated-out receipt key retires at once (nothing needs its private part
again), but its public key stays published: the receipts it signed keep verifying.
Rotations and retirements are journaled by the `*_op` functions, which run as store
operations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from common.clock import now_ms
from common.errors import precondition
from common.files import write_secret
from common.vouchers import Signer

from .core import journal
from .store.base import Record, Store, Tx

log = logging.getLogger("broker.keys")

# A voucher key retires this long after the longest-lived voucher it can have signed
# would expire: an Authorize that read the old key id just before the rotation may
# commit its authorization a little after it.
RETIRE_MARGIN_MS = 60_000
# meta/<this><key id>: the retirement of that voucher key is journaled.
RETIRED_MARKER = "voucher_key_retired/"


def key_id_for(verify_key: VerifyKey) -> str:
    return "k" + hashlib.sha256(bytes(verify_key)).hexdigest()[:15]


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    public_key: bytes
    active: bool
    create_ms: int
    # When a rotated-out key retires (0 while active); retired: already done.
    retire_ms: int = 0
    retired: bool = False


@dataclass(frozen=True)
class Rotation:
    previous_key_id: str
    key_id: str
    retire_ms: int


@dataclass(frozen=True)
class _Key:
    public: VerifyKey
    signing: SigningKey | None  # None once retired
    create_ms: int
    retire_ms: int


def _new_record(signing: SigningKey, now: int) -> Record:
    return {"key_id": key_id_for(signing.verify_key), "seed": bytes(signing).hex(),
            "public_key": bytes(signing.verify_key).hex(), "create_ms": now, "retire_ms": 0}


class Keyring:
    def __init__(self, directory: Path):
        self.directory = directory
        self._lock = threading.Lock()
        # (active id, keys), replaced as a whole: the event loop reads it while the
        # store's writer thread rotates.
        self._state: tuple[str, dict[str, _Key]] = self._read()
        self._seen = self._files()

    def _read(self) -> tuple[str, dict[str, _Key]]:
        directory = self.directory
        active_file = directory / "ACTIVE"
        if not active_file.exists():
            raise FileNotFoundError(f"no signing key in {directory}; run `broker init`")
        keys = {}
        for path in sorted(directory.glob("*.json")):
            record = json.loads(path.read_text())
            keys[record["key_id"]] = self._load(record)
        active_id = active_file.read_text().strip()
        if active_id not in keys or keys[active_id].signing is None:
            raise ValueError(f"active key {active_id} missing from {directory}")
        return active_id, keys

    def _files(self) -> frozenset[tuple[str, int, int]]:
        return frozenset((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                         for p in self.directory.iterdir())

    def reload(self) -> bool:
        """Take up a rotation or retirement that another process wrote (the server
        processes of `broker serve --processes N` share the key files but each keeps
        its keyring in memory). Cheap when nothing changed. True if something did."""
        with self._lock:
            files = self._files()
            if files == self._seen:
                return False
            self._state, self._seen = self._read(), files
            return True

    @staticmethod
    def _load(record: Record) -> _Key:
        signing = SigningKey(bytes.fromhex(record["seed"])) if record.get("seed") else None
        public = VerifyKey(bytes.fromhex(record["public_key"])) if "public_key" in record \
            else signing.verify_key  # files written before rotation existed
        return _Key(public, signing, record["create_ms"], record.get("retire_ms", 0))

    @staticmethod
    def create(directory: Path) -> str:
        """Generate a new key and make it the active one. Returns its key id."""
        record = _new_record(SigningKey.generate(), now_ms())
        write_secret(directory / f"{record['key_id']}.json", json.dumps(record).encode())
        write_secret(directory / "ACTIVE", record["key_id"].encode())
        return record["key_id"]

    @classmethod
    def open(cls, directory: Path) -> Keyring:
        """The keyring in `directory`, with a first key created if it has none (a data
        directory initialised before this keyring existed)."""
        if not (directory / "ACTIVE").exists():
            cls.create(directory)
        return cls(directory)

    @property
    def active_id(self) -> str:
        return self._state[0]

    @property
    def signer(self) -> Signer:
        active_id, keys = self._state
        return Signer(active_id, keys[active_id].signing)

    def signer_for(self, key_id: str) -> Signer:
        key = self._state[1][key_id]
        if key.signing is None:
            raise precondition("SIGNING_KEY_RETIRED",
                               f"key {key_id} has retired: what it signed has expired",
                               key_id=key_id)
        return Signer(key_id, key.signing)

    def verify_keys(self, *, include_retired: bool = False) -> dict[str, VerifyKey]:
        return {kid: key.public for kid, key in self._state[1].items()
                if include_retired or key.signing is not None}

    def public_keys(self, *, include_retired: bool = False) -> list[PublicKey]:
        active_id, all_keys = self._state
        keys = [PublicKey(kid, bytes(key.public), kid == active_id, key.create_ms,
                          key.retire_ms, key.signing is None)
                for kid, key in all_keys.items()
                if include_retired or key.signing is not None]
        return sorted(keys, key=lambda k: (not k.active, -k.create_ms, k.key_id))

    def rotate(self, now: int, retire_ms: int) -> Rotation:
        """Make a fresh key active; the old one retires at `retire_ms`."""
        with self._lock:
            previous_id, keys = self._state
            previous = keys[previous_id]
            signing = SigningKey.generate()
            record = _new_record(signing, now)
            # The new key is on disk before ACTIVE names it; the old one's retire time
            # before it stops being active.
            write_secret(self.directory / f"{record['key_id']}.json",
                         json.dumps(record).encode())
            self._write(previous_id, previous, retire_ms)
            keys = {**keys, record["key_id"]: self._load(record),
                    previous_id: _Key(previous.public, previous.signing, previous.create_ms,
                                      retire_ms)}
            write_secret(self.directory / "ACTIVE", record["key_id"].encode())
            self._state = (record["key_id"], keys)
            return Rotation(previous_id, record["key_id"], retire_ms)

    def due(self, now: int) -> list[str]:
        """Rotated-out keys whose retire time has come and which still have a seed."""
        active_id, keys = self._state
        return sorted(kid for kid, key in keys.items()
                      if key.signing is not None and key.retire_ms and key.retire_ms <= now
                      and kid != active_id)

    def retire_due(self, now: int) -> list[str]:
        """Destroy the private part of every key that is due. Returns their ids."""
        return self.retire(self.due(now))

    def retire(self, key_ids: list[str]) -> list[str]:
        """Destroy the private part of these rotated-out keys (those that still have
        one; the active key never). Idempotent: a key already retired stays so, so a
        second broker on the same key directory may do it too. Returns those retired."""
        with self._lock:
            active_id, keys = self._state
            keys = dict(keys)
            retired = [kid for kid in key_ids if kid in keys and kid != active_id
                       and keys[kid].signing is not None]
            for kid in retired:
                old = keys[kid]
                keys[kid] = _Key(old.public, None, old.create_ms, old.retire_ms)
                self._write(kid, keys[kid], old.retire_ms)
            self._state = (active_id, keys)
            return retired

    def _write(self, key_id: str, key: _Key, retire_ms: int) -> None:
        record = {"key_id": key_id, "public_key": bytes(key.public).hex(),
                  "create_ms": key.create_ms, "retire_ms": retire_ms}
        if key.signing is not None:
            record["seed"] = bytes(key.signing).hex()
        write_secret(self.directory / f"{key_id}.json", json.dumps(record).encode())


# -- journaled operations (run by the store's writer) ---------------------------------


def rotate_voucher_key(tx: Tx, keyring: Keyring, now: int, max_ttl_ms: int,
                       made: list[Rotation] | None = None) -> Record:
    """`made`: a list that outlives the runs of one operation (the caller's): a
    transaction that runs again after a serialisation failure (PostgreSQL) journals the
    rotation its first run made on disk, instead of rotating a second time."""
    made = [] if made is None else made
    if not made:
        made.append(keyring.rotate(now, now + max_ttl_ms + RETIRE_MARGIN_MS))
        log.info("voucher signing key rotated: %s is active; %s verifies until it retires "
                 "at %d", made[0].key_id, made[0].previous_key_id, made[0].retire_ms)
    rotation = made[0]
    journal.append(tx, "voucher_key_rotated", {
        "previous_key_id": rotation.previous_key_id, "key_id": rotation.key_id,
        "previous_retire_ms": rotation.retire_ms}, now)
    return {"previous_key_id": rotation.previous_key_id, "key_id": rotation.key_id,
            "previous_retire_ms": rotation.retire_ms}


def rotate_receipt_key(tx: Tx, keyring: Keyring, now: int,
                       made: list[Rotation] | None = None) -> Record:
    """`made`: as for `rotate_voucher_key`."""
    made = [] if made is None else made
    if not made:
        made.append(keyring.rotate(now, now))
        keyring.retire_due(now)
        log.info("receipt signing key rotated: %s is active; %s retired (public key kept)",
                 made[0].key_id, made[0].previous_key_id)
    rotation = made[0]
    journal.append(tx, "receipt_key_rotated", {
        "previous_key_id": rotation.previous_key_id, "key_id": rotation.key_id}, now)
    return {"previous_key_id": rotation.previous_key_id, "key_id": rotation.key_id}


def journal_retirements(tx: Tx, keyring: Keyring, now: int) -> list[str]:
    """The op of a voucher key retirement: journal, once per key, that each key due now
    retires; the caller destroys their seeds after the commit (`finish_retirements`).
    Why after: on PostgreSQL a transaction may run again after a serialisation failure,
    and a run that had destroyed the seeds would leave the next one nothing due to
    journal. So the seeds go only once the entries are committed, and a marker in `meta`
    (one per key) keeps a second run (another broker, or a sweep after a crash before the
    seeds went) from journaling a key twice. Returns the keys due (journaled now or
    before)."""
    due = keyring.due(now)
    for key_id in due:
        marker = f"{RETIRED_MARKER}{key_id}"
        if tx.get("meta", marker) is None:
            tx.put("meta", marker, {"retire_ms": now})
            journal.append(tx, "voucher_key_retired", {"key_id": key_id}, now)
    return due


def finish_retirements(keyring: Keyring, due: list[str]) -> list[str]:
    """After the commit of `journal_retirements`: destroy the seeds of its keys."""
    for key_id in keyring.retire(due):
        log.info("voucher signing key %s retired: its vouchers have expired", key_id)
    return due


def retire_voucher_keys(store: Store, keyring: Keyring, now: int) -> list[str]:
    """Both steps, blocking (the daemon's sweep runs them through `submit_single`):
    journal the retirement of every voucher key due at `now`, then destroy their seeds.
    Returns their ids."""
    due = store.submit_sync(lambda tx: journal_retirements(tx, keyring, now))
    return finish_retirements(keyring, due)
