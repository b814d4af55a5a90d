"""Every Store implementation, by name, for the tests that run against all of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from broker.store import TABLES, LmdbStore, MemoryStore, Store, Tx
from tests import pg_cluster

KINDS = ("memory", "lmdb", "postgresql")


def open_store(kind: str, tmp_path: Path, *, sealer: Callable[[Tx], object] | None = None
               ) -> Store:
    if kind == "memory":
        return MemoryStore(sealer=sealer)
    if kind == "lmdb":
        return LmdbStore(tmp_path / "ledger", durable=False, sealer=sealer)
    if kind == "postgresql":
        from broker.store.pg_store import PgStore

        return PgStore(pg_cluster.fresh_database(), sealer=sealer, pool_size=4)
    raise ValueError(kind)


def snapshot(store: Store) -> dict[str, dict]:
    """Every table, read in one snapshot."""
    return store.read(lambda tx: {t: dict(tx.scan(t)) for t in TABLES})
