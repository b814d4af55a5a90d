"""Runtime tables several brokers on one PostgreSQL database share: what one broker kept
in its memory (or its prefork processes in `RuntimeTables`), in UNLOGGED tables of the
layout (no WAL, emptied by a database crash, which costs only a fresh start: workers
beat again, rate buckets refill).

- `worker_leases` (`PgSharedTable`): worker liveness, so that a heartbeat to one broker
  counts in the offers of every other;
- `rate_buckets` (`PgRateBuckets`): agents' request-rate token buckets, so that a key's
  limit holds across brokers, not per broker.

Each call is one autocommit statement (no transaction of its own to begin and commit).
A lost database is STORE_UNAVAILABLE, as for any operation.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool

if TYPE_CHECKING:
    from .pg_store import PgStore

# The DDL of these tables (pg_store.layout_ddl adds it to the layout).
DDL = [
    "CREATE UNLOGGED TABLE IF NOT EXISTS worker_leases (k text PRIMARY KEY, v bigint NOT NULL)",
    # One row per agent key that has a request rate: tokens in 1/60000ths of a request
    # (core/rate_limits.py), when they were counted, the rate they were counted at.
    "CREATE UNLOGGED TABLE IF NOT EXISTS rate_buckets (k text PRIMARY KEY, "
    "tokens bigint NOT NULL, last bigint NOT NULL, per_minute bigint NOT NULL, "
    "burst bigint NOT NULL, wait_ms bigint NOT NULL)",
]
TABLES = ("worker_leases", "rate_buckets")


def _statement(store: PgStore, query: str, params: Any = ()) -> list[tuple]:
    store._check_open()
    try:
        with store._pool.connection() as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
        raise store._unavailable(error) from None


class PgSharedTable(MutableMapping[str, int]):
    """str -> int in an UNLOGGED table of the layout, one statement per call, like
    LMDB's SharedTable for the processes of one broker (worker liveness)."""

    # Every call is a round trip to the database: callers on the event loop make it
    # through the store's executor (api/base.py `Services.off_loop`).
    remote = True

    def __init__(self, store: PgStore, table: str) -> None:
        assert table in ("worker_leases",), table  # names from the layout only
        self._store, self._table = store, table

    def _rows(self, query: str, params: tuple = ()) -> list[tuple]:
        return _statement(self._store, query.format(t=self._table), params)

    def __getitem__(self, key: str) -> int:
        rows = self._rows("SELECT v FROM {t} WHERE k = %s", (key,))
        if not rows:
            raise KeyError(key)
        return rows[0][0]

    def __setitem__(self, key: str, value: int) -> None:
        self._rows("INSERT INTO {t} VALUES (%s, %s) ON CONFLICT (k) DO UPDATE "
                   "SET v = EXCLUDED.v", (key, value))

    def __delitem__(self, key: str) -> None:
        if not self._rows("DELETE FROM {t} WHERE k = %s RETURNING k", (key,)):
            raise KeyError(key)

    def pop(self, key: str, *default: Any) -> Any:  # one statement: no race between two
        rows = self._rows("DELETE FROM {t} WHERE k = %s RETURNING v", (key,))
        if rows:
            return rows[0][0]
        if default:
            return default[0]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter([key for key, _ in self.items()])

    def __len__(self) -> int:
        return self._rows("SELECT count(*) FROM {t}")[0][0]

    def items(self) -> list[tuple[str, int]]:  # type: ignore[override]
        """One snapshot (the mixin would read each key separately)."""
        return [(k, v) for k, v in self._rows("SELECT k, v FROM {t}")]


# core/rate_limits.py's `_take`, as one statement on the bucket's row (the row lock
# orders brokers taking from one bucket). `refilled`: the tokens at `now`, at most the
# burst; the time counted is capped at the burst's refill time at one request per
# minute, which refills any bucket (and keeps the product far inside bigint).
_REFILLED = ("LEAST(%(capacity)s, b.tokens + GREATEST(0, LEAST(%(now)s - b.last, %(span)s))"
             " * %(per_minute)s)")
_TAKE = f"""
INSERT INTO rate_buckets AS b (k, tokens, last, per_minute, burst, wait_ms)
VALUES (%(k)s, %(capacity)s - %(unit)s, %(now)s, %(per_minute)s, %(burst)s, 0)
ON CONFLICT (k) DO UPDATE SET
  tokens = CASE WHEN {_REFILLED} >= %(unit)s THEN {_REFILLED} - %(unit)s ELSE {_REFILLED} END,
  wait_ms = CASE WHEN {_REFILLED} >= %(unit)s THEN 0
                 ELSE (%(unit)s - {_REFILLED} + %(per_minute)s - 1) / %(per_minute)s END,
  last = %(now)s, per_minute = %(per_minute)s, burst = %(burst)s
RETURNING wait_ms"""
# Full buckets are as good as none (a new one starts full): the sweep drops them.
_PRUNE = ("DELETE FROM rate_buckets WHERE tokens + GREATEST(0, LEAST(%(now)s - last, "
          "burst * 60000)) * per_minute >= burst * %(unit)s")


class PgRateBuckets:
    """Request-rate buckets in the database (core/rate_limits.py `AtomicBuckets`): one
    statement per request of a rate-limited agent key (none for other callers)."""

    remote = True  # as PgSharedTable's

    def __init__(self, store: PgStore) -> None:
        self._store = store

    def take(self, key: str, per_minute: int, burst: int, unit: int, now: int) -> int | None:
        """One request from `key`'s bucket: None, or the ms to wait when it is empty."""
        capacity = burst * unit
        (wait_ms,), = _statement(self._store, _TAKE, {
            "k": key, "capacity": capacity, "unit": unit, "now": now,
            "per_minute": per_minute, "burst": burst, "span": burst * 60_000})
        return wait_ms or None

    def prune(self, now: int, unit: int) -> int:
        """Drop the buckets that have refilled; how many."""
        return len(_statement(self._store, _PRUNE + " RETURNING k", {"now": now, "unit": unit}))

    def __len__(self) -> int:
        return _statement(self._store, "SELECT count(*) FROM rate_buckets")[0][0]
