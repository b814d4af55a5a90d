"""An in-memory `Store`, for pure tests and the property tests of the core.

Same semantics as `LmdbStore`: values go through JSON (so what an op reads back is
exactly what LMDB would give), keys obey LMDB's limits, each op runs in its own
`BufferedTx` and an op that raises changes nothing. Nothing is durable.

With `record_access=True` it also notes, per operation, which keys it read (point
reads and scanned ranges) and which it wrote (and whether each write inserted a key
that did not exist): tests/core/test_disjoint_keys.py uses that to show that
operations of unrelated owners share no key, the contract a store with several
writers relies on.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from broker.store.base import TABLES, Record, Tx
from broker.store.buffered import (
    BufferedTx,
    IdClock,
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
        self.data: dict[str, bytes] = {}
        self.keys: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        if key not in self.data:
            insort(self.keys, key)
        self.data[key] = data

    def delete(self, key: str) -> None:
        if self.data.pop(key, None) is not None:
            del self.keys[bisect_left(self.keys, key)]


@dataclass
class Access:
    """The keys one operation touched: (table, key) pairs, scanned (table, lo, hi)
    ranges (hi None: unbounded), and of its writes those that created the key."""

    reads: set[tuple[str, str]] = field(default_factory=set)
    ranges: list[tuple[str, str, str | None]] = field(default_factory=list)
    writes: set[tuple[str, str]] = field(default_factory=set)
    inserts: set[tuple[str, str]] = field(default_factory=set)


class _MemoryTx:
    """The Tx over the live tables (writable only when flushing an op's overlay)."""

    __slots__ = ("_tables", "_writable", "_ids", "_access")

    def __init__(self, tables: dict[str, _Table], *, writable: bool,
                 ids: IdClock | None = None, access: Access | None = None) -> None:
        self._tables = tables
        self._writable = writable
        self._ids = ids
        self._access = access

    def next_id(self) -> int:
        self._check_writable()
        assert self._ids is not None
        return self._ids.next()

    def _table(self, table: str) -> _Table:
        check_table(table)
        return self._tables[table]

    def get(self, table: str, key: str) -> Record | None:
        t = self._table(table)
        check_key(key)
        if self._access is not None:
            self._access.reads.add((table, key))
        data = t.data.get(key)
        return None if data is None else decode(data)

    def put(self, table: str, key: str, value: Record) -> None:
        check_table(table)
        self.put_encoded(table, key, encode(table, value))

    def put_encoded(self, table: str, key: str, data: bytes) -> None:
        self._check_writable()
        t = self._table(table)
        check_key(key)
        if self._access is not None:
            self._access.writes.add((table, key))
            if key not in t.data:
                self._access.inserts.add((table, key))
        t.put(key, data)

    def delete(self, table: str, key: str) -> None:
        self._check_writable()
        t = self._table(table)
        check_key(key)
        if self._access is not None:
            self._access.writes.add((table, key))
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
        if self._access is not None:
            self._access.ranges.append((table, lo, hi))
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
    """`Store` kept in dicts. Thread-safe; ops and reads run one at a time.

    `sealer`, when given, runs after every operation that committed, as a step of its
    own (the journal's sealer: core/journal.py `seal`)."""

    storage_full = False  # memory never runs out of room the way a disk does

    def __init__(self, *, sealer: Callable[[Tx], object] | None = None,
                 record_access: bool = False) -> None:
        self._tables = {name: _Table() for name in TABLES}
        self._lock = threading.RLock()
        self._closed = False
        self._ids = IdClock()
        self._sealer = sealer
        self._record = record_access
        # With record_access: what each committed operation touched, in order.
        self.accesses: list[Access] = []

    async def submit(self, op: Callable[[Tx], T]) -> T:
        return self.submit_sync(op)

    def submit_sync(self, op: Callable[[Tx], T]) -> T:
        with self._lock:
            self._check_open()
            access = Access() if self._record else None
            tx = BufferedTx(_MemoryTx(self._tables, writable=True, ids=self._ids,
                                      access=access))
            result = op(tx)  # if it raises, the overlay is just dropped
            tx.flush()
            if access is not None:
                self.accesses.append(access)
            if self._sealer is not None:
                sealing = BufferedTx(_MemoryTx(self._tables, writable=True, ids=self._ids))
                self._sealer(sealing)
                sealing.flush()
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
