"""The PostgreSQL `Store`: the same interface as LMDB, for several brokers on one database.

Layout: one table per store table, `t_<name> (k bytea PRIMARY KEY, v bytea)`. Keys are
the utf-8 bytes of the store's keys, so the primary key's order is the byte order that
`scan` promises (bytea compares like memcmp; unlike text it also takes the NUL that
scan bounds such as `after + "\\x00"` carry). Values are the record codec's bytes,
exactly what LMDB stores.

One operation = one transaction, run on a worker thread (the core's ops are synchronous
functions that read as they go): SERIALIZABLE, the op's writes gathered in its
`BufferedTx` and sent with COMMIT in one pipeline (one round trip), retried from scratch
on a serialization failure or a deadlock (ops are pure functions of what they read, so
running one again is safe), a bounded number of times with jittered back-off. An op that
raises is committed too, with nothing written: under SERIALIZABLE only a committed
transaction's reads are known to be consistent, so the error it raised is only reported
once COMMIT says so. A reply means COMMIT returned (synchronous_commit on). Reads
(`read`) run on a REPEATABLE READ, READ ONLY snapshot; the broker's API makes them, and
its statements on the shared tables (pg_shared.py), on the ops' executor (`off_loop`):
never a round trip on the event loop.

Ids (`Tx.next_id`) are unique across brokers without a shared counter: each pooled
connection holds one of 1024 id slots (a session advisory lock) and its own clock,
id = (microseconds << 10) | slot, and the slot's last microsecond is written (in the
`id_slots` row only that connection writes) by every op that took ids, so whoever holds
the slot next continues above it. A connection that dies loses its slot with it, and its
open transaction can no longer commit.

The journal's sealer runs in one broker at a time: a background thread holds a session
advisory lock on its own connection while it seals (a broker that loses that connection
loses the lock), at REPEATABLE READ, so ops never conflict with it.

A lost database gives `store_unavailable` (UNAVAILABLE, STORE_UNAVAILABLE, RetryInfo):
the caller retries with the same request_id and gets the one true answer, through the
idempotency table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from common.errors import BrokerError, Code

from . import pg_shared, pg_signals
from .base import TABLES, Record, Tx
from .buffered import (
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
from .dsn import StoreOpenError, masked

T = TypeVar("T")

log = logging.getLogger("broker.store")

# The SQL layout (tables and columns) this module reads and writes; `meta/schema_version`
# is the records' version. Stored in `broker_layout`; `broker migrate` moves it forward.
LAYOUT_VERSION = 4  # 2: worker_leases; 3: rate_buckets; 4: owner_refunds, provider_refunds
ID_SLOT_BITS = 10
ID_SLOTS = 1 << ID_SLOT_BITS
# Advisory lock keys (two int4): the class says what, the second number which one.
LOCK_ID_SLOT = 0x62726B01   # (class, slot): the id slot a connection holds
LOCK_SINGLE = 0x62726B02    # (class, n): work that one broker does at a time
SEALER = 1
# Sweep work that one broker does at a time (`submit_single`), by name: the roll-up
# rewrites every platform account's row, key retirement renames files in the shared
# key directory. SERIALIZABLE alone keeps them correct; the lock saves the others the
# work and the retries.
SINGLE_RUNNERS = {"roll_up": 2, "voucher_keys": 3}
MAX_ATTEMPTS = 12
BACKOFF_BASE_S = 0.002
BACKOFF_MAX_S = 0.2
RETRY_AFTER_MS = 1000
CONNECT_TIMEOUT_S = 5
# After the database was lost, calls fail at once for this long instead of each waiting
# for a connection (and holding an executor thread meanwhile).
DOWN_HOLD_S = 0.5
GETCONN_TIMEOUT_S = 2.0  # the longest an op waits for a free connection
SEAL_POLL_S = 0.25  # the sealer also looks this often (other brokers' entries)
PAGE = 256  # rows fetched per round trip while a scan is consumed

# Serialisation failures (40001) and deadlocks (40P01): retry the op from scratch.
_RETRY = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def sql_table(table: str) -> str:
    return f"t_{table}"


def layout_ddl() -> list[str]:
    """CREATE statements of the whole layout (idempotent)."""
    out = [f"CREATE TABLE IF NOT EXISTS {sql_table(t)} (k bytea PRIMARY KEY, v bytea NOT NULL)"
           for t in TABLES]
    out += [
        "CREATE TABLE IF NOT EXISTS id_slots (slot integer PRIMARY KEY, last bigint NOT NULL)",
        "CREATE TABLE IF NOT EXISTS broker_layout (version integer NOT NULL)",
        # Worker liveness and request-rate buckets (pg_shared.py): what one broker's
        # memory held, shared by all, UNLOGGED.
        *pg_shared.DDL,
    ]
    return out


def store_unavailable(message: str) -> BrokerError:
    """The database was lost during an operation (or it kept conflicting): UNAVAILABLE
    with RetryInfo, which every RPC maps like any BrokerError."""
    return BrokerError(Code.UNAVAILABLE, "STORE_UNAVAILABLE", message,
                       retry_after_ms=RETRY_AFTER_MS)


class _Conn(psycopg.Connection):
    """A pooled connection with the id slot it holds (set by `PgStore._configure`)."""

    slot: int = -1
    ids: IdClock


class _PgTx:
    """A Tx over one open transaction: an op's (writable) or a snapshot (read-only)."""

    __slots__ = ("_conn", "_writable", "_lock_reads", "ids_taken", "_read")

    def __init__(self, conn: psycopg.Connection, *, writable: bool,
                 lock_reads: bool = False) -> None:
        self._conn = conn
        self._writable = writable
        self._lock_reads = lock_reads  # REPEATABLE READ mode: FOR UPDATE on point reads
        self.ids_taken = False
        # Point reads already made in this transaction (its snapshot does not move, and
        # its own writes come only from `apply`): an authorization reads the same policy
        # and sub-budget rows several times, each a round trip (`make bench`, postgres).
        self._read: dict[tuple[str, str], bytes | None] = {}

    def next_id(self) -> int:
        self._check_writable()
        conn = self._conn
        if not isinstance(conn, _Conn) or conn.slot < 0:
            raise RuntimeError("this connection holds no id slot")
        self.ids_taken = True
        return (conn.ids.next() << ID_SLOT_BITS) | conn.slot

    def get(self, table: str, key: str) -> Record | None:
        check_table(table)
        raw = check_key(key)
        if (table, key) in self._read:
            data = self._read[(table, key)]
        else:
            query = f"SELECT v FROM {sql_table(table)} WHERE k = %s"
            if self._lock_reads:
                query += " FOR UPDATE"
            row = self._conn.execute(query, (raw,), binary=True).fetchone()
            data = self._read[(table, key)] = None if row is None else bytes(row[0])
        return None if data is None else decode(data)

    def put(self, table: str, key: str, value: Record) -> None:
        check_table(table)
        self.put_encoded(table, key, encode(table, value))

    def put_encoded(self, table: str, key: str, data: bytes) -> None:
        self._check_writable()
        check_table(table)
        check_key(key)
        self.apply({table: {key: data}})

    def delete(self, table: str, key: str) -> None:
        self._check_writable()
        check_table(table)
        check_key(key)
        self.apply({table: {key: None}})

    def apply(self, tables: dict[str, dict[str, bytes | None]]) -> None:
        """Write a BufferedTx's pending writes (checked when they were made). Run in a
        pipeline (PgStore._attempt), they go out with the COMMIT in one round trip."""
        self._check_writable()
        with self._conn.cursor(binary=True) as cur:
            for table, pending in tables.items():
                for written in pending:
                    self._read.pop((table, written), None)
                name = sql_table(table)
                puts = [(k.encode(), v) for k, v in pending.items() if v is not None]
                deletes = [(k.encode(),) for k, v in pending.items() if v is None]
                # Never prepared: a statement prepared in a pipeline that then fails (a
                # conflict) is forgotten by the server but not by psycopg's cache.
                upsert = (f"INSERT INTO {name} (k, v) VALUES (%s, %s) "
                          "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v")
                for params in puts:
                    cur.execute(upsert, params, prepare=False)
                for key in deletes:
                    cur.execute(f"DELETE FROM {name} WHERE k = %s", key, prepare=False)

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
        check_table(table)
        check_limit(limit)
        lo, hi = key_range(prefix, start, stop)
        return self._pages(sql_table(table), lo.encode(), None if hi is None else hi.encode(),
                           reverse, limit)

    def claim(self, table: str, stop: str, limit: int) -> list[tuple[str, Record]]:
        """`base.due` on PostgreSQL: the first `limit` rows below `stop` that no other
        transaction holds, locked (FOR UPDATE) until this one ends; the others skipped.
        Under SERIALIZABLE a sweep that finds every due row claimed by another broker
        reads nothing they write, so it commits without a conflict."""
        self._check_writable()
        check_table(table)
        check_limit(limit)
        rows = self._conn.execute(
            f"SELECT k, v FROM {sql_table(table)} WHERE k < %s ORDER BY k LIMIT {int(limit)} "
            "FOR UPDATE SKIP LOCKED", (check_key(stop),), binary=True).fetchall()
        return [(bytes(k).decode(), decode(v)) for k, v in rows]

    def _pages(self, name: str, lo: bytes, hi: bytes | None, reverse: bool,
               limit: int | None) -> Iterator[tuple[str, Record]]:
        """Keyset pages in one transaction (one snapshot), fetched as they are consumed."""
        left = limit
        after: bytes | None = None  # the last key returned
        order = "DESC" if reverse else "ASC"
        while left is None or left > 0:
            size = PAGE if left is None else min(left, PAGE)
            where, params = ["k >= %s"], [lo]
            if hi is not None:
                where.append("k < %s")
                params.append(hi)
            if after is not None:
                where.append("k < %s" if reverse else "k > %s")
                params.append(after)
            rows = self._conn.execute(
                f"SELECT k, v FROM {name} WHERE {' AND '.join(where)} ORDER BY k {order} "
                f"LIMIT {size}", params, binary=True).fetchall()
            for k, v in rows:
                yield bytes(k).decode(), decode(v)
            if len(rows) < size:
                return
            after = bytes(rows[-1][0])
            if left is not None:
                left -= len(rows)

    def _check_writable(self) -> None:
        if not self._writable:
            raise ReadOnlyError("this Tx is read-only")


class PgStore:
    """`Store` on a PostgreSQL database (`url`, a postgresql:// DSN).

    create=True (`broker init`): create the layout when the database has none.
    migrate=True (`broker migrate`): bring an older layout up to date. Then the layout
    must be this release's LAYOUT_VERSION (StoreOpenError if not).
    `sealer` (core/journal.py `seal`): run after commits by whichever broker holds the
    sealer lock. `isolation`: "serializable" (the default, see docs/scale-out.md) or
    "repeatable read" (row locks: point reads take FOR UPDATE; measured, not used).
    """

    # The database server's disk is its operator's to watch: a full one fails our
    # commits, which callers see as STORE_UNAVAILABLE (not the LMDB map-full path).
    storage_full = False

    def __init__(self, url: str, *, create: bool = False, migrate: bool = False,
                 pool_size: int = 16,
                 sealer: Callable[[Tx], object] | None = None,
                 isolation: str = "serializable",
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if isolation not in ("serializable", "repeatable read"):
            raise ValueError(f"isolation must be serializable or repeatable read, "
                             f"not {isolation!r}")
        self.url = url
        self.name = masked(url)
        self._isolation = isolation
        self._begin = f"BEGIN ISOLATION LEVEL {isolation.upper()}"
        self._sealer = sealer
        self._timeout = connect_timeout_s
        self._check_database(create, migrate)
        self.stats: dict[str, float] = {"commits": 0, "failed_commits": 0, "ops": 0,
                                        "retries": 0, "commit_seconds": 0.0}
        # Told about every op like LmdbStore's batches: (1, seconds of COMMIT, committed?).
        self.commit_observer: Callable[[int, float, bool], None] | None = None
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=2, max_size=pool_size, open=False, timeout=GETCONN_TIMEOUT_S,
            connection_class=_Conn, configure=self._configure,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(self._timeout))},
            name="broker-store")
        try:
            self._pool.open(wait=True, timeout=self._timeout)
        except psycopg_pool.PoolTimeout:
            self._pool.close()
            raise StoreOpenError(f"cannot connect to PostgreSQL at {self.name}") from None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=pool_size, thread_name_prefix="pg-op")
        self._lock = threading.Lock()
        self._closed = False
        self._down_until = 0.0
        self._seal_wanted = threading.Event()
        self._stopping = threading.Event()
        self._sealer_thread: threading.Thread | None = None
        # Tables whose writes send a change signal to every broker (`listen`).
        self._signal_tables: frozenset[str] = frozenset()
        self.listener: pg_signals.Listener | None = None
        if sealer is not None:
            self._sealer_thread = threading.Thread(target=self._run_sealer, name="pg-sealer",
                                                   daemon=True)
            self._sealer_thread.start()

    # -- opening ---------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.url, autocommit=True,
                                   connect_timeout=max(1, int(self._timeout)))
        except psycopg.Error as error:
            raise StoreOpenError(f"cannot connect to PostgreSQL at {self.name}: "
                                 f"{_first_line(error)}") from None

    def _check_database(self, create: bool, migrate: bool) -> None:
        """Reachable, and the layout there (created when `create`) is this release's."""
        with self._connect() as conn:
            try:
                if create or migrate:
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_SINGLE,))
                        found = stored_layout(conn)
                        # Layouts only grow (CREATE ... IF NOT EXISTS): an older one
                        # becomes this one by running the DDL again.
                        if (found is None and create) or (
                                found is not None and found < LAYOUT_VERSION and migrate):
                            for statement in layout_ddl():
                                conn.execute(statement)
                            conn.execute("DELETE FROM broker_layout")
                            conn.execute("INSERT INTO broker_layout VALUES (%s)",
                                         (LAYOUT_VERSION,))
                version = stored_layout(conn)
            except psycopg.Error as error:
                raise StoreOpenError(f"PostgreSQL at {self.name}: {_first_line(error)}") \
                    from None
        if version is None:
            raise StoreOpenError(f"PostgreSQL database {self.name} has no broker tables; "
                                 f"run `broker init --store {self.name}` first")
        if version != LAYOUT_VERSION:
            newer = version > LAYOUT_VERSION
            raise StoreOpenError(
                f"PostgreSQL database {self.name} has table layout {version}, this release "
                f"uses {LAYOUT_VERSION}: " + ("written by a newer release; use that release"
                                              if newer else "run `broker migrate` first"))

    def _configure(self, conn: psycopg.Connection) -> None:
        """Every new pooled connection: take a free id slot and continue its clock."""
        assert isinstance(conn, _Conn)
        start = random.randrange(ID_SLOTS)
        row = conn.execute(
            "SELECT s FROM (SELECT (n + %s) %% %s AS s FROM generate_series(0, %s) n) c "
            "WHERE pg_try_advisory_lock(%s, s) LIMIT 1",
            (start, ID_SLOTS, ID_SLOTS - 1, LOCK_ID_SLOT)).fetchone()
        if row is None:
            raise RuntimeError(f"all {ID_SLOTS} id slots are taken: too many connections")
        conn.slot = row[0]
        last = conn.execute("SELECT last FROM id_slots WHERE slot = %s", (conn.slot,)).fetchone()
        conn.ids = IdClock(last[0] if last else 0)
        # Index scans, never whole-table ones: SERIALIZABLE then locks the key ranges an
        # op read, not the table (a whole-table read conflicts with every writer).
        conn.execute("SET enable_seqscan = off")

    # -- the Store interface ---------------------------------------------------

    async def submit(self, op: Callable[[Tx], T]) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        # (None only for submit_single's skipped runs: without `single`, always T)
        return cast(T, await loop.run_in_executor(self._executor, lambda: self._run_op(op)))

    def submit_sync(self, op: Callable[[Tx], T]) -> T:
        self._check_open()
        return cast(T, self._run_op(op))

    async def submit_single(self, name: str, op: Callable[[Tx], T]) -> T | None:
        """`submit`, by one broker at a time: the transaction first takes the advisory
        lock `name` (SINGLE_RUNNERS) on its connection, and when another broker holds
        it, ends at once and returns None without running `op`. The lock goes with
        the transaction, so a broker that dies or loses its connection lets go."""
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_op, op,
                                          SINGLE_RUNNERS[name])

    def listen(self, tables: frozenset[str] | set[str] | tuple[str, ...],
               on_change: Callable[[], None]) -> None:
        """Change signals between brokers (pg_signals.py): from now on, a transaction
        that writes one of `tables` sends NOTIFY with its COMMIT, and `on_change` is
        called (on the listener's thread) for every such commit by any broker on this
        database, this one included."""
        self._check_open()
        assert self.listener is None, "listen once"
        self._signal_tables = frozenset(tables)
        self.listener = pg_signals.Listener(self.url, self.name, on_change)

    async def off_loop(self, call: Callable[[], T]) -> T:
        """`call()` (a blocking `read`, a statement on a shared table) on the ops'
        executor, so that its round trips never stall the event loop (docs/scale-out.md).
        The same executor as the ops: at most `pool_size` threads ask for the
        `pool_size` connections, and none waits for one that more threads took."""
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def read_async(self, fn: Callable[[Tx], T]) -> T:
        """`read(fn)` off the event loop."""
        return await self.off_loop(lambda: self.read(fn))

    def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` on a REPEATABLE READ, READ ONLY snapshot. Consume scans inside `fn`.
        Blocking: from the event loop, use `read_async`."""
        self._check_open()
        try:
            with self._pool.connection() as conn:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    return fn(_PgTx(conn, writable=False))
                finally:
                    if not conn.closed:
                        conn.execute("ROLLBACK")
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
            raise self._unavailable(error) from None

    def close(self) -> None:
        """Let running ops finish, seal what they wrote, close the connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)
        if self.listener is not None:
            self.listener.stop()
        self._stopping.set()
        self._seal_wanted.set()
        if self._sealer_thread is not None:
            self._sealer_thread.join()
        self._pool.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running an op ---------------------------------------------------------

    def _run_op(self, op: Callable[[Tx], T], single: int | None = None) -> T | None:
        for attempt in range(MAX_ATTEMPTS):
            try:
                with self._pool.connection() as conn:
                    return self._attempt(conn, op, single)
            except _RETRY:
                self.stats["retries"] += 1
                time.sleep(random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempt)))
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
                self._count(0.0, committed=False)
                raise self._unavailable(error) from None
        self._count(0.0, committed=False)
        raise store_unavailable(f"the operation conflicted with others {MAX_ATTEMPTS} times; "
                               "retry with the same request_id")

    def _attempt(self, conn: psycopg.Connection, op: Callable[[Tx], T],
                 single: int | None = None) -> T | None:
        """One try in one transaction: COMMIT, or raise (the op's error once COMMIT has
        shown that what it read was consistent; a retryable conflict; a lost database).
        With `single`, None when another broker holds that single-runner lock."""
        conn.execute(self._begin)
        if single is not None and not _one(
                conn, "SELECT pg_try_advisory_xact_lock(%s, %s)", (LOCK_SINGLE, single)):
            conn.execute("ROLLBACK")
            return None
        base = _PgTx(conn, writable=True, lock_reads=self._isolation != "serializable")
        tx = BufferedTx(base)
        try:
            result = op(tx)
        except (psycopg.Error, StoreClosed):
            _rollback(conn)
            raise
        except BaseException:
            _still_in_transaction(conn)
            # Nothing was written; COMMIT checks the reads the error rests on.
            conn.execute("COMMIT")
            raise
        _still_in_transaction(conn)
        # A change others wait for: NOTIFY, delivered by the COMMIT (pg_signals.py).
        signal = not self._signal_tables.isdisjoint(tx.written_tables())
        try:
            started = time.perf_counter()
            with conn.pipeline():  # the writes and COMMIT go out together: one round trip
                tx.flush()
                if signal:
                    conn.execute(pg_signals.NOTIFY, prepare=False)
                if base.ids_taken:
                    assert isinstance(conn, _Conn)
                    conn.execute("INSERT INTO id_slots VALUES (%s, %s) ON CONFLICT (slot) "
                                 "DO UPDATE SET last = EXCLUDED.last", (conn.slot, conn.ids.last),
                                 prepare=False)
                conn.execute("COMMIT", prepare=False)
        except BaseException:
            _rollback(conn)
            raise
        self._count(time.perf_counter() - started, committed=True)
        if self._sealer is not None:
            self._seal_wanted.set()
        return result

    def _count(self, seconds: float, *, committed: bool) -> None:
        stats = self.stats
        stats["ops"] += 1
        stats["commits" if committed else "failed_commits"] += 1
        stats["commit_seconds"] += seconds
        if self.commit_observer is not None:
            try:
                self.commit_observer(1, seconds, committed)
            except Exception:  # a broken metrics hook must not fail the op
                log.exception("commit observer failed")

    def _unavailable(self, error: BaseException) -> BrokerError:
        self._down_until = time.monotonic() + DOWN_HOLD_S
        log.warning("PostgreSQL at %s: %s", self.name, _first_line(error))
        return store_unavailable("the broker's database cannot be reached; retry with the "
                                "same request_id")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.name} is closed")
        if time.monotonic() < self._down_until:
            raise store_unavailable("the broker's database cannot be reached; retry with the "
                                   "same request_id")

    def shared_table(self, name: str) -> pg_shared.PgSharedTable:
        """A runtime table every broker on this database shares (`worker_leases`)."""
        return pg_shared.PgSharedTable(self, name)

    def rate_buckets(self) -> pg_shared.PgRateBuckets:
        """The request-rate buckets every broker on this database shares."""
        return pg_shared.PgRateBuckets(self)

    # -- single-runner work ----------------------------------------------------

    def _run_sealer(self) -> None:
        """Seal the journal while this broker holds the sealer lock; look again whenever
        an op committed here, and every SEAL_POLL_S for other brokers' entries."""
        conn: psycopg.Connection | None = None
        held = False
        assert self._sealer is not None
        sealer = self._sealer
        while True:
            self._seal_wanted.wait(SEAL_POLL_S)
            self._seal_wanted.clear()
            stopping = self._stopping.is_set()
            try:
                if conn is None or conn.closed:
                    conn, held = self._connect(), False
                if not held:
                    held = _one(conn, "SELECT pg_try_advisory_lock(%s, %s)",
                                (LOCK_SINGLE, SEALER))
                if held:
                    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    tx = BufferedTx(_PgTx(conn, writable=True))
                    try:
                        sealer(tx)
                        with conn.pipeline():
                            tx.flush()
                            conn.execute("COMMIT", prepare=False)
                    except BaseException:
                        _rollback(conn)
                        raise
            except Exception as error:  # the entries stay unsealed; the next look seals them
                log.warning("journal sealer: %s", _first_line(error))
                if conn is not None:
                    conn.close()
                conn, held = None, False
            if stopping:
                if conn is not None:
                    conn.close()
                return


def stored_layout(conn: psycopg.Connection) -> int | None:
    """The layout version in the database, or None when it has no broker tables."""
    if _one(conn, "SELECT to_regclass('broker_layout')") is None:
        return None
    return _one(conn, "SELECT max(version) FROM broker_layout")


def _one(conn: psycopg.Connection, query: str, params: tuple = ()) -> Any:
    """The first column of the one row `query` returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def _still_in_transaction(conn: psycopg.Connection) -> None:
    """Raise what the op swallowed. An op that runs several on their own (a metering
    batch: store/group.py) keeps going past one that raised, a database error too: then
    the transaction is aborted (every later statement fails, and COMMIT would be
    refused as InFailedSqlTransaction: an INTERNAL to the caller) or the connection is
    gone. Run the op again from scratch, or report the database lost."""
    status = conn.info.transaction_status
    if status == psycopg.pq.TransactionStatus.INTRANS:
        return
    _rollback(conn)
    if status == psycopg.pq.TransactionStatus.INERROR:
        raise pg_errors.SerializationFailure("a statement of the operation failed inside it")
    raise psycopg.OperationalError("the connection was lost during the operation")


def _rollback(conn: psycopg.Connection) -> None:
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
