"""Grow a stopped broker's ledger fast, for the ledger_growth figure.

    python -m bench.ledger_fill DATA_DIR ENTRIES

Appends ENTRIES journal entries ("authorized", the broker's most common kind, with
data of the same shape and size) after the current journal head, hash-chained exactly
as broker.core.journal does (so `broker audit` still verifies the chain), and moves the
head. It writes LMDB directly, not through the broker's store: one write transaction
per 250,000 entries, `putmulti(append=True)` (the keys are ascending sequence numbers,
so LMDB just fills the rightmost pages), the JSON bodies from a template instead of
json.dumps, no fsync until the end. About 10 s per million entries on the bench machine.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import lmdb

from broker.core.journal import GENESIS, verify_tx
from broker.store.base import TABLES
from broker.store.lmdb_store import lock_dir, unlock_dir

CHUNK = 250_000


def fill(data_dir: Path, entries: int, *, time_ms: int | None = None) -> dict[str, int]:
    ledger = Path(data_dir) / "ledger"
    lock = lock_dir(ledger)  # the broker must be stopped
    env = lmdb.open(str(ledger), map_size=8 << 30, max_dbs=len(TABLES), sync=False,
                    metasync=False)
    try:
        journal, meta = env.open_db(b"journal"), env.open_db(b"meta")
        with env.begin() as txn:
            raw = txn.get(b"journal_head", db=meta)
        head = json.loads(raw) if raw else {"seq": 0, "hash": GENESIS}
        seq, prev = head["seq"], head["hash"]
        now = time_ms or int(time.time() * 1000)
        written = 0
        while written < entries:
            batch = []
            for _ in range(min(CHUNK, entries - written)):
                seq += 1
                key, value, prev = _entry(seq, now, prev)
                batch.append((key, value))
            with env.begin(write=True) as txn:
                txn.cursor(db=journal).putmulti(batch, append=True)
                txn.put(b"journal_head", json.dumps({"seq": seq, "hash": prev},
                                                    separators=(",", ":")).encode(), db=meta)
            written += len(batch)
        env.sync(True)
        return {"entries": written, "head_seq": seq}
    finally:
        env.close()
        unlock_dir(lock)


def _entry(seq: int, now: int, prev: str) -> tuple[bytes, bytes, str]:
    """(key, stored value, hash) of journal entry `seq`."""
    n = f"{seq:024x}"
    # Sorted keys, no spaces, ASCII: journal.canonical's output, spelled out.
    data = (f'{{"amount":{1000 + seq % 9000},"authorization_id":"auth_{n}",'
            f'"hold_id":"tr_{n}","voucher_id":"vch_{n}","wallet_id":"wal_{n[8:]}"}}')
    body = f'{{"data":{data},"kind":"authorized","seq":{seq},"time_ms":{now}}}'
    digest = hashlib.sha256(prev.encode() + body.encode()).hexdigest()
    value = (f'{{"seq":{seq},"time_ms":{now},"kind":"authorized","data":{data},'
             f'"prev":"{prev}","hash":"{digest}"}}')
    return f"{seq:020d}".encode(), value.encode(), digest


def check_template() -> None:
    """Entries made by `_entry` verify with the broker's own chain check."""
    from broker.store import MemoryStore

    store, prev = MemoryStore(), GENESIS

    def put(tx, key, value):
        tx.put("journal", key.decode(), json.loads(value))

    for seq in range(1, 4):
        key, value, prev = _entry(seq, 1_700_000_000_000, prev)
        store.submit_sync(lambda tx, k=key, v=value: put(tx, k, v))
    store.submit_sync(lambda tx: tx.put("meta", "journal_head", {"seq": 3, "hash": prev}))
    assert store.read(verify_tx) == []


if __name__ == "__main__":
    check_template()
    started = time.perf_counter()
    result = fill(Path(sys.argv[1]), int(sys.argv[2]))
    print(json.dumps({**result, "seconds": round(time.perf_counter() - started, 1)}))
