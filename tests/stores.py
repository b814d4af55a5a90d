"""The stores the core tests run on: memory, LMDB and PostgreSQL, by name."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from broker.core import journal
from broker.store import TABLES, LmdbStore, MemoryStore, Store
from broker.store.lmdb_store import ID_CLOCK_KEY
from tests import pg_cluster


class SealedEachOp:
    """A store whose journal is sealed right after each op, as a step of its own (like
    MemoryStore's sealer): PgStore seals in the background, which a test comparing
    snapshots before and after a refused op must not see happen in between."""

    def __init__(self, store: Store) -> None:
        self.inner = store

    def submit_sync(self, op):
        result = self.inner.submit_sync(op)
        self.inner.submit_sync(journal.seal)
        return result

    async def submit(self, op):
        return self.submit_sync(op)

    def read(self, fn):
        return self.inner.read(fn)

    def close(self) -> None:
        self.inner.close()


def model_store(kind: str) -> tuple[Store, Callable[[], None]]:
    """A store of `kind` for a core test with the journal sealed after each op, and what
    disposes of it."""
    if kind == "memory":
        store = MemoryStore(sealer=journal.seal)
        return store, store.close
    if kind == "lmdb":
        folder = Path(tempfile.mkdtemp(prefix="broker-model-"))
        store = LmdbStore(folder, durable=False, sealer=journal.seal)

        def dispose() -> None:
            store.close()
            shutil.rmtree(folder, ignore_errors=True)

        return store, dispose
    from broker.store.pg_store import PgStore

    url = pg_cluster.fresh_database()
    sealed = SealedEachOp(PgStore(url, pool_size=2))

    def dispose_pg() -> None:
        sealed.close()
        pg_cluster.recycle(url)

    return sealed, dispose_pg  # type: ignore[return-value]


def snapshot(store: Store) -> dict[str, dict]:
    """Every table, read in one snapshot; without the store's own bookkeeping (LMDB's
    id clock in `meta`, which moves on when a refused op took ids)."""
    tables = store.read(lambda tx: {t: dict(tx.scan(t)) for t in TABLES})
    tables["meta"].pop(ID_CLOCK_KEY.decode(), None)
    return tables
