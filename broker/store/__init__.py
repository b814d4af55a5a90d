"""Storage: the narrow `Store`/`Tx` interface and its implementations."""

from broker.store.base import TABLES, Record, Store, Tx
from broker.store.buffered import BufferedTx, ReadOnlyError, StorageFull, StoreClosed
from broker.store.lmdb_store import DataDirLocked, LmdbStore
from broker.store.memory import MemoryStore

__all__ = [
    "TABLES",
    "BufferedTx",
    "DataDirLocked",
    "LmdbStore",
    "MemoryStore",
    "ReadOnlyError",
    "StorageFull",
    "Record",
    "Store",
    "StoreClosed",
    "Tx",
]
