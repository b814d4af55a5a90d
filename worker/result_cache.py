"""Local result cache (LMDB). Keys include the voucher's opaque cache scope, so
entries are never shared across owners, and the worker never learns who they are."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lmdb

from broker.core.journal import canonical
from broker.files import PRIVATE_FILE, make_private, private_dir


def cache_key(cache_scope: str, job: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical({"scope": cache_scope, "job": job})).digest()


class ResultCache:
    def __init__(self, path: Path, map_size: int = 1 << 30):
        # Cached results are the agents' outputs: private, like the rest of the state.
        private_dir(path)
        # A cache may lose its last entries in a crash; no need to fsync every put.
        self._env = lmdb.open(str(path), map_size=map_size, sync=False, metasync=False,
                              mode=PRIVATE_FILE)
        make_private(path)  # files an older version created 0644

    def get(self, key: bytes) -> dict[str, Any] | None:
        with self._env.begin() as txn:
            raw = txn.get(key)
        return json.loads(raw) if raw else None

    def put(self, key: bytes, entry: dict[str, Any]) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(key, json.dumps(entry).encode())

    def close(self) -> None:
        self._env.close()
