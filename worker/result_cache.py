"""Local result cache (LMDB). Keys include the voucher's opaque cache scope, so
entries are never shared across owners, and the worker never learns who they are.

Bounded: it keeps the `max_entries` most recently stored results and forgets the
oldest beyond that (an LMDB map that fills up would fail every later put)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import lmdb

from common.canonical import canonical
from common.files import PRIVATE_FILE, make_private, private_dir

MAX_ENTRIES = 10_000


def cache_key(cache_scope: str, job: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical({"scope": cache_scope, "job": job})).digest()


class ResultCache:
    def __init__(self, path: Path, map_size: int = 1 << 30, max_entries: int = MAX_ENTRIES):
        # Cached results are the agents' outputs: private, like the rest of the state.
        private_dir(path)
        # A cache may lose its last entries in a crash; no need to fsync every put.
        self._env = lmdb.open(str(path), map_size=map_size, sync=False, metasync=False,
                              max_dbs=2, mode=PRIVATE_FILE)
        make_private(path)  # files an older version created 0644
        self._entries = self._env.open_db(b"entries")  # key -> [stored_ns, entry]
        self._order = self._env.open_db(b"order")  # stored_ns (8 bytes) + key -> b""
        self.max_entries = max_entries
        with self._env.begin(write=True) as txn:  # entries of the unbounded layout before
            for stale in [k for k in txn.cursor().iternext(values=False) if len(k) == 32]:
                txn.delete(stale)

    @property
    def size(self) -> int:
        with self._env.begin() as txn:
            return txn.stat(self._entries)["entries"]

    def get(self, key: bytes) -> dict[str, Any] | None:
        with self._env.begin(db=self._entries) as txn:
            raw = txn.get(key)
        return json.loads(raw)[1] if raw else None

    def put(self, key: bytes, entry: dict[str, Any]) -> None:
        stored = time.time_ns()
        with self._env.begin(write=True) as txn:
            old = txn.get(key, db=self._entries)
            if old is not None:
                txn.delete(_order_key(json.loads(old)[0], key), db=self._order)
            txn.put(key, json.dumps([stored, entry]).encode(), db=self._entries)
            txn.put(_order_key(stored, key), b"", db=self._order)
            excess = txn.stat(self._entries)["entries"] - self.max_entries
            if excess > 0:
                cursor = txn.cursor(db=self._order)
                cursor.first()
                for _ in range(excess):  # the oldest first
                    txn.delete(cursor.key()[8:], db=self._entries)
                    cursor.delete()

    def close(self) -> None:
        self._env.close()


def _order_key(stored_ns: int, key: bytes) -> bytes:
    return stored_ns.to_bytes(8, "big") + key
