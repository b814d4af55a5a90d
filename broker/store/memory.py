"""An in-memory `Store`, for pure tests and the property tests of the core.

Same semantics as `LmdbStore`: values go through JSON (so what an op reads back is
exactly what LMDB would give), keys obey LMDB's limits, each op runs in its own
`BufferedTx` and an op that raises changes nothing. Nothing is durable.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from typing import TypeVar

from broker.store.base import TABLES, Record, Tx
from broker.store.buffered import (
    BufferedTx,
    ReadOnlyError,
    StoreClosed,
    check_key,
    check_limit,
    check_table,
    decode,
    encode,
    key_range,
)

T = TypeVar("T")


class _Table:
    """Encoded values plus a sorted key list, so scans are a bisect and a slice."""

    __slots__ = ("data", "keys")

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.keys: list[str] = []

    def put(self, key: str, data: str) -> None:
        if key not in self.data:
            insort(self.keys, key)
        self.data[key] = data

    def delete(self, key: str) -> None:
        if self.data.pop(key, None) is not None:
            del self.keys[bisect_left(self.keys, key)]


class _MemoryTx:
    """The Tx over the live tables (writable only when flushing an op's overlay)."""

    __slots__ = ("_tables", "_writable")

    def __init__(self, tables: dict[str, _Table], *, writable: bool) -> None:
        self._tables = tables
        self._writable = writable

    def _table(self, table: str) -> _Table:
        check_table(table)
        return self._tables[table]

    def get(self, table: str, key: str) -> Record | None:
        t = self._table(table)
        check_key(key)
        data = t.data.get(key)
        return None if data is None else decode(data)

    def put(self, table: str, key: str, value: Record) -> None:
        self.put_encoded(table, key, encode(value))

    def put_encoded(self, table: str, key: str, data: str) -> None:
        self._check_writable()
        t = self._table(table)
        check_key(key)
        t.put(key, data)

    def delete(self, table: str, key: str) -> None:
        self._check_writable()
        t = self._table(table)
        check_key(key)
        t.delete(key)

    def scan(
        self,
        table: str,
        prefix: str = "",
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[str, Record]]:
        t = self._table(table)
        check_limit(limit)
        lo, hi = key_range(prefix, start, stop)
        i = bisect_left(t.keys, lo)
        j = len(t.keys) if hi is None else bisect_left(t.keys, hi)
        if limit is not None:
            if reverse:
                i = max(i, j - limit)
            else:
                j = min(j, i + limit)
        keys = t.keys[i:j]
        if reverse:
            keys.reverse()
        # Values taken now: the result is a snapshot, like an LMDB read transaction.
        items = [(k, t.data[k]) for k in keys]
        return ((k, decode(data)) for k, data in items)

    def _check_writable(self) -> None:
        if not self._writable:
            raise ReadOnlyError("this Tx is read-only")


class MemoryStore:
    """`Store` kept in dicts. Thread-safe; ops and reads run one at a time."""

    storage_full = False  # memory never runs out of room the way a disk does

    def __init__(self) -> None:
        self._tables = {name: _Table() for name in TABLES}
        self._lock = threading.RLock()
        self._closed = False

    async def submit(self, op: Callable[[Tx], T]) -> T:
        return self.submit_sync(op)

    def submit_sync(self, op: Callable[[Tx], T]) -> T:
        with self._lock:
            self._check_open()
            tx = BufferedTx(_MemoryTx(self._tables, writable=True))
            result = op(tx)  # if it raises, the overlay is just dropped
            tx.flush()
            return result

    def read(self, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            self._check_open()
            return fn(_MemoryTx(self._tables, writable=False))

    def snapshot(self) -> dict[str, dict[str, Record]]:
        """A deep copy of every table (all of them, empty ones included)."""
        with self._lock:
            return {
                name: {k: decode(t.data[k]) for k in t.keys} for name, t in self._tables.items()
            }

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")
