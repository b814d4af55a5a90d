"""Storage: the narrow `Store`/`Tx` interface and its implementations.

The implementations load lazily, so that importing the interface (as the core does)
never loads LMDB.
"""

from __future__ import annotations

import importlib
from typing import Any

from broker.store.base import TABLES, Record, StorageFull, Store, Tx

_LAZY = {"BufferedTx": "buffered", "ReadOnlyError": "buffered", "StoreClosed": "buffered",
         "DataDirLocked": "lmdb_store", "LmdbStore": "lmdb_store", "MemoryStore": "memory"}

__all__ = ["TABLES", "Record", "StorageFull", "Store", "Tx", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
