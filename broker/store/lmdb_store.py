"""The LMDB `Store`: one writer thread with group commit, lock-free reads.

Why group commit: an fsync'd commit costs about the same for one op as for a
thousand, so the writer drains whatever is queued into one write transaction,
runs each op in its own `BufferedTx` (a raising op is dropped, the rest commit),
commits once, and only then answers all the callers. Reads use LMDB read
transactions (MVCC) and never wait for the writer.

This is the only module that imports `lmdb`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import functools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from itertools import islice
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar, cast

import lmdb

from broker.store.base import TABLES, Record, StorageFull, Tx
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
from common.files import PRIVATE_FILE, make_private, private_dir
from common.thread_answers import Answer, answer_on_loops

T = TypeVar("T")

log = logging.getLogger("broker.store")

LOCK_FILE = "broker.lock"
DEFAULT_MAX_BATCH = 4096
# Under load the writer waits a little for company before it starts a batch: see _linger.
BUSY_GAP_S = 0.005  # an op this soon after the last batch means ops keep coming
LINGER_STEP_S = 0.0002
LINGER_MAX_S = 0.002
# After a commit failed for lack of room, storage counts as full until a commit that
# writes succeeds with at least this much free on the file system: LMDB reuses freed
# pages, so small writes can succeed on a disk that has no room for the next big one.
RECOVERY_FREE_BYTES = 4 << 20

_STOP = object()  # queued by close(): everything queued before it still runs
_UNREAD: Any = object()  # _LmdbTx's read cache: not read yet (None: read, not there)
# meta key where the writer keeps its IdClock between batches: prefork's server
# processes each have a writer, and LMDB runs their write transactions one at a time.
ID_CLOCK_KEY = b"id_clock"
# How long the writer waits for an event loop to start running a batch's ops before it
# runs them itself (_on_callers_loop): long enough for a busy loop, short for a blocked one.
HANDOFF_WAIT_S = 0.05
# The most ops the loop runs in one go (about 230 us each for an authorization), so
# that a big batch does not keep it from serving for long.
HANDOFF_MAX_OPS = 32

# (op, loop, future): loop is None for submit_sync's concurrent.futures.Future.
_Item = tuple[Callable[[Tx], Any], asyncio.AbstractEventLoop | None, Any]
_Outcome = tuple[Any, BaseException | None]


class DataDirLocked(RuntimeError):
    """Another LmdbStore (in this or another process) holds the data directory."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "an unknown pid"
        super().__init__(f"data directory {path} is locked by another broker ({holder})")
        self.path = path
        self.pid = pid


def lock_dir(path: Path) -> int:
    """flock `<path>/broker.lock` without blocking and write our pid into it; the fd.

    flock belongs to the open file description, so a second open in this same
    process conflicts too (LMDB forbids opening one env twice in a process).
    Forked children share the parent's lock (prefork: see broker.daemon).
    The file is never deleted: unlinking a lock file races with the next opener.
    """
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise DataDirLocked(path, pid) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):  # the holder may not have written it yet
        return None


def unlock_dir(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class _LmdbTx:
    """A Tx over one LMDB transaction: the writer's (writable) or a reader's.

    `cached`: remember what each point read found (the stored bytes, or None) until the
    next write through this Tx. The writer's batches use it: their writes gather in an
    overlay and reach this Tx once, at the end (`_run_batch`), so every read before that
    sees the transaction as it began, and the ops of a batch read the same records
    again and again (the caller's policy, its sub-budget or none, the worker's key).
    The bytes are decoded on every read: callers get a fresh record each time."""

    __slots__ = ("_txn", "_dbs", "_writable", "_ids", "_cache")

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any], *, writable: bool,
                 ids: IdClock | None = None, cached: bool = False) -> None:
        self._txn = txn
        self._dbs = dbs
        self._writable = writable
        self._ids = ids
        self._cache: dict[tuple[str, str], bytes | None] | None = {} if cached else None

    def next_id(self) -> int:
        self._check_writable()
        assert self._ids is not None
        return self._ids.next()

    def _db(self, table: str) -> Any:
        db = self._dbs.get(table)
        if db is None:
            check_table(table)  # raises: not a table
        return db

    def get(self, table: str, key: str) -> Record | None:
        cache = self._cache
        if cache is None:
            data = cast(bytes | None, self._txn.get(check_key(key), db=self._db(table)))
        else:
            data = cache.get((table, key), _UNREAD)
            if data is _UNREAD:
                data = cache[table, key] = cast(
                    bytes | None, self._txn.get(check_key(key), db=self._db(table)))
        return None if data is None else decode(data)

    def put(self, table: str, key: str, value: Record) -> None:
        check_table(table)
        self.put_encoded(table, key, encode(table, value))

    def put_encoded(self, table: str, key: str, data: bytes) -> None:
        self._check_writable()
        if self._cache:
            self._cache.clear()
        self._txn.put(check_key(key), data, db=self._db(table))

    def delete(self, table: str, key: str) -> None:
        self._check_writable()
        if self._cache:
            self._cache.clear()
        self._txn.delete(check_key(key), db=self._db(table))

    def apply(self, tables: dict[str, dict[str, bytes | None]]) -> None:
        """Write a BufferedTx's pending writes (tables and keys checked when they were
        made): the writer's hottest loop, so no second round of checks."""
        self._check_writable()
        if self._cache:
            self._cache.clear()
        txn, dbs = self._txn, self._dbs
        for table, pending in tables.items():
            db = dbs[table]
            for key, data in pending.items():
                if data is None:
                    txn.delete(key.encode(), db=db)
                else:
                    txn.put(key.encode(), data, db=db)

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
        # Validated now, iterated lazily (a cursor walk stops as soon as the caller does).
        db = self._db(table)
        check_limit(limit)
        lo, hi = key_range(prefix, start, stop)
        items = self._walk(db, lo.encode(), None if hi is None else hi.encode(), reverse)
        return items if limit is None else islice(items, limit)

    def _walk(
        self, db: Any, lo: bytes, hi: bytes | None, reverse: bool
    ) -> Iterator[tuple[str, Record]]:
        # utf-8 byte order equals code point order, so bytes bounds match str bounds.
        with self._txn.cursor(db=db) as cur:
            if reverse:
                if hi is None:
                    found = cur.last()
                else:  # the last key < hi
                    found = cur.prev() if cur.set_range(hi) else cur.last()
                if not found:
                    return
                for k, v in cast(Iterator[tuple[bytes, bytes]], cur.iterprev()):
                    if k < lo:
                        return
                    yield k.decode(), decode(v)
            else:
                if not cur.set_range(lo):
                    return
                for k, v in cast(Iterator[tuple[bytes, bytes]], cur.iternext()):
                    if hi is not None and k >= hi:
                        return
                    yield k.decode(), decode(v)

    def _check_writable(self) -> None:
        if not self._writable:
            raise ReadOnlyError("this Tx is read-only")


class LmdbStore:
    """`Store` on an LMDB environment in the directory `path` (created if missing).

    durable=True: every commit is fsync'd before callers are answered.
    durable=False: no fsync (benchmarks only; a power loss may lose acknowledged ops).
    lock=False: do not take the directory lock because the caller holds it for us
    (prefork: the parent locks, then every forked server process opens the env;
    LMDB serialises their write transactions, each process keeps its own writer).
    Cancelling a caller of `submit` does not cancel its op: once queued it runs
    and may commit.

    Group commit is observable: `stats` holds running totals, and `commit_observer`
    (set by metrics) is told about every batch.

    `sealer` (the journal's, core/journal.py `seal`) runs once per batch after its
    operations, in the same write transaction: it is the one sealer, and it sees the
    entries in commit order because this writer is the only one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = 8 << 30,
        durable: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
        lock: bool = True,
        sealer: Callable[[Tx], object] | None = None,
    ) -> None:
        self.path = private_dir(Path(path))
        self._sealer = sealer
        self._ids = IdClock()
        self._max_batch = max_batch
        self._lock_fd = lock_dir(self.path) if lock else None
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(TABLES),
                max_readers=1024,
                sync=durable,
                metasync=durable,
                mode=PRIVATE_FILE,  # for the files LMDB creates
            )
            make_private(self.path)  # and for those an older version created 0644
            with self._env.begin(write=True) as txn:
                self._dbs = {t: self._env.open_db(t.encode(), txn=txn) for t in TABLES}
        except BaseException:
            if self._lock_fd is not None:
                unlock_dir(self._lock_fd)
            raise
        self.stats: dict[str, float] = {
            "commits": 0,
            "failed_commits": 0,
            "ops": 0,
            "last_batch_size": 0,
            "max_batch_size": 0,
            "commit_seconds": 0.0,
        }
        # Told about every batch on the writer thread: (ops in it, seconds its commit and
        # fsync took, committed?). Metrics set it; it must be quick and must not block.
        self.commit_observer: Callable[[int, float, bool], None] | None = None
        # True from a commit that failed for lack of room until one that wrote succeeds
        # with room to spare (the daemon turns health NOT_SERVING meanwhile and probes
        # with a small write).
        self.storage_full = False
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submits against close
        self._closed = False
        self._readers = 0
        self._no_readers = threading.Condition(self._lock)
        self._running_ops: int | None = None  # the thread running a batch's ops, if any
        self._writer = threading.Thread(target=self._run_writer, name="lmdb-writer", daemon=True)
        self._writer.start()

    # -- the Store interface -------------------------------------------------

    async def submit(self, op: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue((op, loop, future))
        return await future

    def enqueue(self, op: Callable[[Tx], T], loop: asyncio.AbstractEventLoop,
                future: asyncio.Future[T]) -> None:
        """`submit` for a caller on another thread that holds `loop`'s `future` (the
        crypto thread hands a checked usage report on): the writer runs `op` and answers
        `future` on `loop`, as for `submit`. Thread-safe; StoreClosed once closed."""
        self._enqueue((op, loop, future))

    def submit_sync(self, op: Callable[[Tx], T]) -> T:
        if self._inside_an_op():
            raise RuntimeError("submit_sync from inside an op would deadlock the writer")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._enqueue((op, None, future))
        return future.result()

    def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` on a read snapshot. Consume scans inside `fn`: they end with it."""
        with self._lock:
            if self._closed:
                raise StoreClosed(f"store {self.path} is closed")
            self._readers += 1  # close() waits for us before closing the env
        try:
            with self._env.begin(write=False, buffers=False) as txn:
                return fn(_LmdbTx(txn, self._dbs, writable=False))
        finally:
            with self._lock:
                self._readers -= 1
                if self._readers == 0:
                    self._no_readers.notify_all()

    def close(self) -> None:
        """Run everything already queued, stop the writer, close the env, unlock."""
        if self._inside_an_op():
            raise RuntimeError("close() from inside an op would deadlock the writer")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()
        with self._lock:
            self._no_readers.wait_for(lambda: self._readers == 0)
        self._env.close()
        if self._lock_fd is not None:
            unlock_dir(self._lock_fd)

    def _inside_an_op(self) -> bool:
        """Whether the caller is an op of the running batch (on the writer, or on the
        event loop the writer handed the batch to)."""
        return (threading.current_thread() is self._writer
                or self._running_ops == threading.get_ident())

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer ----------------------------------------------------------

    def _enqueue(self, item: _Item) -> None:
        with self._lock:
            if self._closed:
                raise StoreClosed(f"store {self.path} is closed")
            self._queue.put(item)

    def _run_writer(self) -> None:
        q = self._queue
        last_batch_end = 0.0
        while True:
            item = q.get()  # block for the first op ...
            if item is _STOP:
                return
            if perf_counter() - last_batch_end < BUSY_GAP_S:
                self._linger()
            batch: list[_Item] = [item]
            stopping = False
            while len(batch) < self._max_batch:  # ... then take all that is waiting
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._resolve(batch, self._run_batch(batch))
            last_batch_end = perf_counter()
            if stopping:
                return

    def _linger(self) -> None:
        """While ops keep arriving, wait (without the GIL) up to LINGER_MAX_S before
        taking the batch. Why: the event loop and this thread share one GIL, and every
        batch costs a hand-over each way plus a commit. Without the wait a busy broker
        commits one op at a time (the writer wakes for each op the loop queues) and
        spends more on those hand-overs than on the ops; a few hundred microseconds
        make batches of several ops. An op after a quiet spell never waits."""
        q = self._queue
        waited, seen = 0.0, q.qsize()
        while waited < LINGER_MAX_S:
            time.sleep(LINGER_STEP_S)
            waited += LINGER_STEP_S
            size = q.qsize()
            if size == seen:
                return
            seen = size

    def _run_batch(self, batch: list[_Item]) -> list[_Outcome]:
        """Run the ops in one write txn and commit once; the outcome of each op. This
        thread begins and commits the txn (LMDB's write lock belongs to the thread that
        took it); the ops run on their callers' event loop when they all came from one
        (`_run_ops`), so that the fsync'd commit runs here while that loop serves."""
        try:
            txn = self._env.begin(write=True)
            try:
                outcomes, wrote = self._fill(txn, batch)
            except BaseException:
                txn.abort()
                raise
            started = perf_counter()
            txn.commit()  # one that fails is aborted by LMDB
            committed = perf_counter()
        except BaseException as exc:  # nothing of this batch is on disk
            if isinstance(exc, lmdb.DiskError | lmdb.MapFullError):
                # ENOSPC ("mdb_txn_commit: No space left on device") or a full map: the
                # callers get StorageFull (UNAVAILABLE, STORAGE_FULL), not an lmdb error.
                if not self.storage_full:
                    log.error("ledger write failed, storage full: %s", exc)
                self.storage_full = True
                full = StorageFull(f"cannot write the ledger: {exc}")
                full.__cause__ = exc
                exc = full
            self.stats["failed_commits"] += 1
            self.stats["ops"] += len(batch)
            self._observe(len(batch), 0.0, False)
            return [(None, exc)] * len(batch)
        if wrote and self.storage_full and self._room_to_write():
            log.info("ledger writes succeed again: storage no longer full")
            self.storage_full = False
        stats = self.stats
        stats["commits"] += 1
        stats["ops"] += len(batch)
        stats["last_batch_size"] = len(batch)
        stats["max_batch_size"] = max(stats["max_batch_size"], len(batch))
        stats["commit_seconds"] += committed - started
        self._observe(len(batch), committed - started, True)
        return outcomes

    def _fill(self, txn: Any, batch: list[_Item]) -> tuple[list[_Outcome], bool]:
        """Run the ops into `txn` (uncommitted): their outcomes, and whether anything
        was written. An op that raises fails alone; an LMDB error fails the batch."""
        # The batch's writes gather in one overlay and reach LMDB once, at the end: keys
        # that several ops write are put once per batch, and read back from the overlay.
        meta = self._dbs["meta"]
        stored = txn.get(ID_CLOCK_KEY, db=meta)
        ids = self._ids
        if stored is not None:
            ids.last = max(ids.last, json.loads(stored)["last"])
        first_id = ids.last
        written = BufferedTx(_LmdbTx(txn, self._dbs, writable=True, ids=ids, cached=True))

        def finish() -> bool:
            wrote = len(written) > 0  # an empty commit writes no page: it proves nothing
            self._seal(written)
            if ids.last != first_id:
                txn.put(ID_CLOCK_KEY, b'{"last":%d}' % ids.last, db=meta)
            written.flush()  # can fail only in LMDB itself (e.g. map full): whole batch
            return wrote

        chunks = [batch[i:i + HANDOFF_MAX_OPS] for i in range(0, len(batch), HANDOFF_MAX_OPS)]
        outcomes: list[_Outcome] = []
        for ops in chunks[:-1]:
            outcomes += self._on_callers_loop(ops, functools.partial(self._run_ops, written, ops))
        last = chunks[-1]
        done, wrote = self._on_callers_loop(last, lambda: (self._run_ops(written, last), finish()))
        return outcomes + done, wrote

    def _on_callers_loop(self, ops: list[_Item], work: Callable[[], T]) -> T:
        """`work()` on the event loop of `ops`' callers when they share one and it runs;
        here otherwise. Why: the ops are Python and take the GIL; run here, every call
        that releases it (each LMDB get and put, the voucher's signature) hands the GIL
        to the busy loop and waits up to a switch interval to get it back, so a batch
        took several times its CPU time. On the loop they run in one go, and this
        thread only waits, then commits (the fsync, without the GIL) while the loop
        serves. At most HANDOFF_MAX_OPS at a time, so the loop serves in between."""
        loops = {loop for _, loop, _ in ops}
        loop = loops.pop() if len(loops) == 1 else None
        if loop is None or self._closed:
            return work()
        # Whoever starts it first runs it: the loop (set_running_or_notify_cancel), or
        # this thread once the loop has not within the wait (cancel). A loop blocked on
        # this very store (close, submit_sync) would never run it: no deadlock.
        offered: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run_offered() -> None:
            if offered.set_running_or_notify_cancel():
                try:
                    offered.set_result(work())
                except BaseException as error:  # noqa: BLE001 - raised on this thread
                    offered.set_exception(error)

        try:
            loop.call_soon_threadsafe(run_offered)
        except RuntimeError:  # that loop is closed: its callers are gone, the ops are not
            return work()
        concurrent.futures.wait((offered,), HANDOFF_WAIT_S)
        if offered.cancel():  # not started in time
            return work()
        return offered.result()

    def _run_ops(self, written: BufferedTx, ops: list[_Item]) -> list[_Outcome]:
        """Each op in its own overlay on `written`: an op that raises is dropped alone."""
        outcomes: list[_Outcome] = []
        self._running_ops = threading.get_ident()
        try:
            for op, _, _ in ops:
                tx = BufferedTx(written)
                try:
                    result = op(tx)
                except Exception as exc:  # only this op fails: drop its overlay
                    outcomes.append((None, exc))
                    continue
                tx.flush()
                outcomes.append((result, None))
        finally:
            self._running_ops = None
        return outcomes

    def _seal(self, written: BufferedTx) -> None:
        if self._sealer is None:
            return
        tx = BufferedTx(written)
        try:
            self._sealer(tx)
        except Exception:  # the entries stay unsealed, checked by their digests; next batch
            log.exception("journal sealer failed")
            return
        tx.flush()

    def _room_to_write(self) -> bool:
        try:
            fs = os.statvfs(self.path)
        except OSError:
            return True  # cannot tell: the successful write is all the evidence there is
        return fs.f_bavail * fs.f_frsize >= RECOVERY_FREE_BYTES

    def _observe(self, batch_size: int, seconds: float, committed: bool) -> None:
        if self.commit_observer is None:
            return
        try:
            self.commit_observer(batch_size, seconds, committed)
        except Exception:  # a broken metrics hook must not stop the writer
            log.exception("commit observer failed")

    @staticmethod
    def _resolve(batch: list[_Item], outcomes: list[_Outcome]) -> None:
        # One wake-up per event loop per batch, not one per op.
        per_loop: dict[asyncio.AbstractEventLoop, list[Answer]] = {}
        for (_, loop, future), (result, exc) in zip(batch, outcomes, strict=True):
            if loop is None:
                if exc is None:
                    future.set_result(result)
                else:
                    future.set_exception(exc)
            else:
                per_loop.setdefault(loop, []).append((future, result, exc))
        answer_on_loops(per_loop)


class RuntimeTables:
    """Small tables that the server processes of one broker share (prefork), in a
    second LMDB environment without fsync: worker leases (`Liveness`) and request-rate
    buckets (`RequestLimiter`). Neither is durable by design (a restart starts them
    afresh: the prefork parent deletes the directory before it starts the servers), and
    neither may cost a disk flush per heartbeat or per request. Each server process
    opens it after the fork; LMDB's lock file serialises the (tiny) write transactions
    across them, so `SharedTable.update` is atomic across processes.
    """

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = 256 << 20) -> None:
        self.path = private_dir(Path(path))
        self._env = lmdb.open(str(self.path), map_size=map_size, max_dbs=2, max_readers=1024,
                              sync=False, metasync=False, mode=PRIVATE_FILE)
        self.leases = SharedTable(self._env, b"leases")
        self.rate_buckets = SharedTable(self._env, b"rate_buckets")

    def close(self) -> None:
        self._env.close()


class SharedTable(MutableMapping[str, Any]):
    """str -> JSON value, one LMDB transaction per call (see RuntimeTables)."""

    def __init__(self, env: Any, name: bytes) -> None:
        self._env = env
        self._db = env.open_db(name)

    def __getitem__(self, key: str) -> Any:
        with self._env.begin(db=self._db) as txn:
            data = txn.get(key.encode())
        if data is None:
            raise KeyError(key)
        return _json_value(data)

    def __setitem__(self, key: str, value: Any) -> None:
        with self._env.begin(write=True, db=self._db) as txn:
            txn.put(key.encode(), _json_bytes(value))

    def __delitem__(self, key: str) -> None:
        with self._env.begin(write=True, db=self._db) as txn:
            if not txn.delete(key.encode()):
                raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter([key for key, _ in self.items()])

    def __len__(self) -> int:
        with self._env.begin(db=self._db) as txn:
            return txn.stat(self._db)["entries"]

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        """One consistent snapshot (the mixin would read each key separately)."""
        with self._env.begin(db=self._db) as txn:
            return [(k.decode(), _json_value(v)) for k, v in txn.cursor()]

    def update_value(self, key: str, change: Callable[[Any], tuple[Any, T]]) -> T:
        """Atomically, across processes: `change(current value or None)` returns (new
        value, result); the new value is stored and the result returned."""
        with self._env.begin(write=True, db=self._db) as txn:
            data = txn.get(key.encode())
            value, result = change(None if data is None else _json_value(data))
            txn.put(key.encode(), _json_bytes(value))
        return result


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json_value(data: bytes) -> Any:
    return json.loads(data)
