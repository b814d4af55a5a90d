"""Tx building blocks shared by every store: the write overlay, the record codec
and key ranges.

`BufferedTx` is what makes one operation atomic inside a batch: the op writes into
an overlay, and only an op that returns is flushed into the real transaction. An op
that raises is simply dropped, so its half-done writes never reach the batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import msgspec

from broker.store import records
from broker.store.base import TABLES, Record, Tx

# LMDB's compiled-in limit; enforced by every store so they all accept the same keys.
MAX_KEY_BYTES = 511
_SURELY_SHORT = MAX_KEY_BYTES // 4  # characters: at most 4 utf-8 bytes each
_ABSENT: Any = object()

_TABLES = frozenset(TABLES)
assert set(records.TYPES) == _TABLES, "every table declares its record type"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_strict_json = json.JSONEncoder(allow_nan=False)


class StoreClosed(RuntimeError):
    """The store was closed; no more operations or reads are accepted."""


class ReadOnlyError(RuntimeError):
    """A write was attempted through a read-only Tx (one given by `Store.read`)."""


def check_table(table: str) -> None:
    if table not in _TABLES:
        raise ValueError(f"unknown table {table!r}")


def check_key(key: str) -> bytes:
    """The utf-8 key; raises for what LMDB would refuse, so all stores agree."""
    if type(key) is str and 0 < len(key) <= _SURELY_SHORT:  # the common case, quickly
        return key.encode()
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    raw = key.encode()
    if not 0 < len(raw) <= MAX_KEY_BYTES:
        raise ValueError(f"key must be 1..{MAX_KEY_BYTES} utf-8 bytes, got {len(raw)}")
    return raw


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")


def encode(table: str, value: Record) -> bytes:
    """Compact JSON (utf-8) of a record of `table`'s declared type (records.py). Done at
    `put` time so a bad value fails the op that wrote it, and so later mutation of
    `value` by the caller cannot leak into the store. msgspec: several times faster
    than the json module, the same bytes."""
    if not isinstance(value, dict):
        raise TypeError(f"value must be a dict, not {type(value).__name__}")
    records.check(table, value)
    try:
        data = _encode(value)
    except msgspec.EncodeError as error:
        raise TypeError(str(error)) from None
    except OverflowError as error:
        raise ValueError(str(error)) from None
    # msgspec writes NaN and infinities as null; JSON has neither. (find, not `in`:
    # bytes.__contains__ first tries the argument as an int, and formats and clears a
    # TypeError on every call; a few percent of the writer's time.)
    if data.find(b"null") != -1:
        _strict_json.encode(value)
    return data


def decode(data: bytes) -> Record:
    """A record as stored; ValueError when the bytes are not JSON. Always a fresh
    object: callers may mutate what they read."""
    try:
        return _decode(data)
    except msgspec.DecodeError as error:
        raise ValueError(f"stored record is not valid JSON: {error}") from None


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix`
    (None: no upper bound). Code point order equals utf-8 byte order."""
    chars = list(prefix)
    while chars:
        c = ord(chars[-1])
        if c < 0x10FFFF:
            c += 1
            if 0xD800 <= c <= 0xDFFF:  # surrogates cannot be encoded, so no key holds one
                c = 0xE000
            chars[-1] = chr(c)
            return "".join(chars)
        chars.pop()
    return None


def key_range(prefix: str, start: str | None, stop: str | None) -> tuple[str, str | None]:
    """`scan`'s filter as one half-open range lo <= key < hi (hi None: unbounded)."""
    lo = prefix if start is None or start < prefix else start
    hi = prefix_end(prefix)
    if stop is not None and (hi is None or stop < hi):
        hi = stop
    return lo, hi


class IdClock:
    """`Tx.next_id`: microseconds since the epoch, strictly increasing. Not a key in
    the store, so operations that take ids never touch a shared key; a store that has
    several writers persists `last` between them (LmdbStore: per batch, in `meta`)."""

    __slots__ = ("last",)

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self) -> int:
        self.last = max(self.last + 1, time.time_ns() // 1000)
        return self.last


class BufferedTx:
    """A write overlay on a base Tx: reads see this overlay first, then the base.

    Nothing reaches the base until `flush()`. Writes are validated and encoded at
    call time, so `flush()` cannot fail on bad input halfway through. The base must
    not change while the overlay is in use (the stores guarantee that: one op at a
    time, and the base is written only by flushes).
    """

    __slots__ = ("_base", "_tables")

    def __init__(self, base: Tx) -> None:
        self._base = base
        # table -> key -> encoded value, or None for a deletion that hides the base
        self._tables: dict[str, dict[str, bytes | None]] = {}

    def get(self, table: str, key: str) -> Record | None:
        pending = self._tables.get(table)
        if pending is not None:
            data = pending.get(key, _ABSENT)
            if data is not _ABSENT:
                return None if data is None else decode(data)
        return self._base.get(table, key)

    def put(self, table: str, key: str, value: Record) -> None:
        check_table(table)
        data = encode(table, value)
        check_key(key)
        self._tables.setdefault(table, {})[key] = data

    def next_id(self) -> int:
        return self._base.next_id()

    def put_encoded(self, table: str, key: str, data: bytes) -> None:
        check_table(table)
        check_key(key)
        self._tables.setdefault(table, {})[key] = data

    def delete(self, table: str, key: str) -> None:
        check_table(table)
        check_key(key)
        self._tables.setdefault(table, {})[key] = None

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
        check_limit(limit)
        pending = self._tables.get(table)
        if not pending:
            return self._base.scan(
                table, prefix, start=start, stop=stop, reverse=reverse, limit=limit
            )
        lo, hi = key_range(prefix, start, stop)
        # Taken now, so writes made while the caller iterates do not disturb it.
        own = sorted(
            ((k, v) for k, v in pending.items() if lo <= k and (hi is None or k < hi)),
            reverse=reverse,
        )
        # The base scan is unlimited: deletions in the overlay may hide some of it.
        base = self._base.scan(table, prefix, start=start, stop=stop, reverse=reverse)
        merged = _merge(base, own, reverse)
        return merged if limit is None else islice(merged, limit)

    def claim(self, table: str, stop: str, limit: int) -> list[tuple[str, Record]]:
        """`base.due`: the base's claim (PostgreSQL) seen through this overlay, or a
        plain scan when the base has none."""
        claim = getattr(self._base, "claim", None)
        if claim is None:
            return list(self.scan(table, stop=stop, limit=limit))
        check_limit(limit)
        pending = self._tables.get(table)
        if not pending:
            return claim(table, stop, limit)
        # Rows this op deleted may be among those claimed: claim enough to still fill
        # `limit`, and let the overlay win, as in `scan`.
        own = sorted((k, v) for k, v in pending.items() if k < stop)
        return list(islice(_merge(claim(table, stop, limit + len(own)), own, False), limit))

    def flush(self) -> None:
        """Apply every pending write to the base, then start empty again."""
        base = self._base
        apply = getattr(base, "apply", None)
        if apply is not None:  # the base takes them all at once (validated already)
            apply(self._tables)
            self._tables = {}
            return
        put_encoded = getattr(base, "put_encoded", None)
        for table, pending in self._tables.items():
            for key, data in pending.items():
                if data is None:
                    base.delete(table, key)
                elif put_encoded is not None:
                    put_encoded(table, key, data)
                else:
                    base.put(table, key, decode(data))
        self._tables = {}

    def apply(self, tables: dict[str, dict[str, bytes | None]]) -> None:
        """Take over another overlay's pending writes (checked when they were made)."""
        for table, pending in tables.items():
            self._tables.setdefault(table, {}).update(pending)

    def discard(self) -> None:
        """Drop every pending write."""
        self._tables = {}

    def written_tables(self) -> frozenset[str]:
        """The tables this overlay has pending writes to."""
        return frozenset(table for table, pending in self._tables.items() if pending)

    def __len__(self) -> int:
        """How many keys have pending writes."""
        return sum(len(p) for p in self._tables.values())


def _merge(
    base: Iterable[tuple[str, Record]], own: list[tuple[str, bytes | None]], reverse: bool
) -> Iterator[tuple[str, Record]]:
    """Merge two sorted streams; on equal keys the overlay wins, None drops the key."""
    i, n = 0, len(own)
    for key, record in base:
        # Overlay keys that come before this base key.
        while i < n and (own[i][0] > key if reverse else own[i][0] < key):
            k, data = own[i]
            i += 1
            if data is not None:
                yield k, decode(data)
        if i < n and own[i][0] == key:
            data = own[i][1]
            i += 1
            if data is not None:
                yield key, decode(data)
        else:
            yield key, record
    for k, data in own[i:]:
        if data is not None:
            yield k, decode(data)
