"""PgStore: the Store contract on a real PostgreSQL, and what several brokers on one
database rely on (ids, serialisability, the sealer, losing the database)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from broker.core import journal
from broker.store import Tx
from broker.store.dsn import StoreOpenError
from broker.store.pg_store import LAYOUT_VERSION, LOCK_SINGLE, SINGLE_RUNNERS, PgStore
from common.errors import BrokerError, Code

from .test_memory_store import StoreContract, put

WAIT = 10  # seconds; generous, only reached when something is broken


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStore]:
    with PgStore(pg_url, pool_size=4) as s:
        yield s


class TestPgContract(StoreContract):
    pass


def in_threads(count: int, work) -> list:
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 -- reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert not errors, errors
    return results


def test_ids_are_unique_across_brokers_and_restarts(pg_url: str) -> None:
    a, b = PgStore(pg_url, pool_size=3), PgStore(pg_url, pool_size=3)
    try:
        got = in_threads(8, lambda i: (a if i % 2 else b).submit_sync(
            lambda tx: [tx.next_id() for _ in range(200)]))
    finally:
        a.close()
        b.close()
    ids = [i for batch in got for i in batch]
    assert len(set(ids)) == len(ids) == 1600
    for batch in got:  # each op's ids increase
        assert batch == sorted(batch)
    # A store opened later continues above every id of the slots it takes over.
    with PgStore(pg_url, pool_size=3) as c:
        later = in_threads(3, lambda i: c.submit_sync(lambda tx: tx.next_id()))
    assert not set(later) & set(ids)
    assert min(later) >> 10 > max(ids) >> 10 - 0  # the time part moved on


@pytest.mark.parametrize("isolation", ["serializable", "repeatable read"])
def test_concurrent_read_modify_write_loses_nothing(pg_url: str, isolation: str) -> None:
    a = PgStore(pg_url, pool_size=4, isolation=isolation)
    b = PgStore(pg_url, pool_size=4, isolation=isolation)
    a.submit_sync(put("meta", "counter", {"n": 0}))

    def increment(tx: Tx) -> None:
        record = tx.get("meta", "counter")
        time.sleep(0.002)  # widen the window between read and write
        tx.put("meta", "counter", {"n": record["n"] + 1})

    try:
        in_threads(8, lambda i: [(a if i % 2 else b).submit_sync(increment) for _ in range(10)])
        assert a.read(lambda tx: tx.get("meta", "counter")) == {"n": 80}
        assert a.stats["retries"] + b.stats["retries"] > 0  # the conflicts were real
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("isolation", ["serializable", "repeatable read"])
def test_no_write_skew(pg_url: str, isolation: str) -> None:
    """Two ops each read both rows and take one from a different row while the sum
    allows it: run one at a time, only one can take. Snapshot isolation alone lets both."""
    a = PgStore(pg_url, pool_size=2, isolation=isolation)
    a.submit_sync(lambda tx: (tx.put("meta", "x", {"n": 1}), tx.put("meta", "y", {"n": 0})))
    both_read = threading.Barrier(2)

    def take(key: str):
        first = [True]

        def op(tx: Tx) -> bool:
            total = tx.get("meta", "x")["n"] + tx.get("meta", "y")["n"]
            if first[0]:  # only the first attempts meet: retries run alone
                first[0] = False
                # With row locks (repeatable read) the second waits for the first's
                # COMMIT before it reads: they cannot meet here.
                with contextlib.suppress(threading.BrokenBarrierError):
                    both_read.wait(1)
            if total < 1:
                return False
            tx.put("meta", key, {"n": tx.get("meta", key)["n"] - 1})
            return True

        return op

    try:
        took = in_threads(2, lambda i: a.submit_sync(take("x" if i else "y")))
        final = a.read(lambda tx: tx.get("meta", "x")["n"] + tx.get("meta", "y")["n"])
    finally:
        a.close()
    assert sorted(took) == [False, True]
    assert final == 0


def test_journal_is_sealed_once_by_one_of_several_brokers(pg_url: str) -> None:
    stores = [PgStore(pg_url, pool_size=3, sealer=journal.seal) for _ in range(3)]
    try:
        in_threads(6, lambda i: [stores[i % 3].submit_sync(
            lambda tx, i=i, n=n: journal.append(tx, "test", {"i": i, "n": n}, 1))
            for n in range(20)])
        deadline = time.monotonic() + WAIT
        while stores[0].read(lambda tx: list(tx.scan("journal_unsealed", limit=1))):
            assert time.monotonic() < deadline, "entries left unsealed"
            time.sleep(0.05)
        entries = stores[0].read(lambda tx: [e for _, e in tx.scan("journal")])
        assert stores[0].read(journal.verify_tx) == []
    finally:
        for s in stores:
            s.close()
    assert len(entries) == 120
    assert sorted((e["data"]["i"], e["data"]["n"]) for e in entries) == sorted(
        (i, n) for i in range(6) for n in range(20))


def test_an_op_error_is_reported_and_changes_nothing(store: PgStore) -> None:
    def op(tx: Tx) -> None:
        tx.put("meta", "a", {"v": 1})
        raise KeyError("no")

    with pytest.raises(KeyError):
        store.submit_sync(op)
    assert store.read(lambda tx: tx.get("meta", "a")) is None


def test_connection_lost_mid_op_is_unavailable_with_retry_info(store: PgStore,
                                                              pg_url: str) -> None:
    store.submit_sync(put("meta", "a", {"v": 1}))

    def op(tx: Tx) -> None:
        tx.get("meta", "a")
        pid = tx._base._conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        tx.put("meta", "a", {"v": 2})
        tx.get("meta", "b")  # the connection is gone

    with pytest.raises(BrokerError) as caught:
        store.submit_sync(op)
    assert caught.value.code is Code.UNAVAILABLE
    assert caught.value.reason == "STORE_UNAVAILABLE"
    assert caught.value.retry_after_ms and caught.value.retry_after_ms > 0
    # For a moment calls fail at once (nobody waits on a database that just went away)
    # ...
    started = time.monotonic()
    with pytest.raises(BrokerError):
        store.read(lambda tx: None)
    assert time.monotonic() - started < 0.2
    # ... then nothing of the op committed, and the store carries on with new connections.
    deadline = time.monotonic() + WAIT
    while True:
        try:
            found = store.read(lambda tx: tx.get("meta", "a"))
            break
        except BrokerError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert found == {"v": 1}
    store.submit_sync(put("meta", "a", {"v": 3}))
    assert store.read(lambda tx: tx.get("meta", "a")) == {"v": 3}


def test_unreachable_database_is_one_line_with_the_password_masked(tmp_path) -> None:
    url = f"postgresql://broker:s3cret@/broker?host={tmp_path}&port=5999"
    with pytest.raises(StoreOpenError) as caught:
        PgStore(url, connect_timeout_s=2)
    text = str(caught.value)
    assert "cannot connect to PostgreSQL" in text and "\n" not in text
    assert "s3cret" not in text and "broker:***@" in text


def test_a_database_without_the_tables_or_of_another_layout_is_refused(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE broker_layout")
    with pytest.raises(StoreOpenError, match="has no broker tables; run `broker init"):
        PgStore(pg_url)
    PgStore(pg_url, create=True).close()  # init creates what is missing
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE broker_layout SET version = %s", (LAYOUT_VERSION + 1,))
    with pytest.raises(StoreOpenError, match="written by a newer release"):
        PgStore(pg_url)


def test_single_runner_work_runs_on_one_broker_at_a_time(pg_url: str) -> None:
    """`submit_single`: while one broker's roll-up transaction holds the lock, another
    broker's is skipped (None, its op not run); once the first commits, it runs; a
    lock holder whose connection dies lets go."""
    a, b = PgStore(pg_url, pool_size=2), PgStore(pg_url, pool_size=2)
    inside, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow(tx):
        ran.append("a")
        inside.set()
        assert release.wait(WAIT)
        tx.put("meta", "rolled", {"by": "a"})
        return "a"

    def quick(tx):
        ran.append("b")
        return "b"

    try:
        first = threading.Thread(target=lambda: ran.append(
            asyncio.run(a.submit_single("roll_up", slow))))
        first.start()
        assert inside.wait(WAIT)
        assert asyncio.run(b.submit_single("roll_up", quick)) is None
        assert asyncio.run(b.submit_single("voucher_keys", quick)) == "b"  # another lock
        release.set()
        first.join(WAIT)
        assert ran == ["a", "b", "a"]
        assert asyncio.run(b.submit_single("roll_up", quick)) == "b"
        assert b.read(lambda tx: tx.get("meta", "rolled")) == {"by": "a"}
        # A holder that loses its connection (killed) loses the lock with it.
        holder = psycopg.connect(pg_url, autocommit=False)
        holder.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                       (LOCK_SINGLE, SINGLE_RUNNERS["roll_up"]))
        assert asyncio.run(b.submit_single("roll_up", quick)) is None
        with psycopg.connect(pg_url, autocommit=True) as admin:
            # (with a timeout: it waits until the backend is gone, and its lock with it)
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (holder.info.backend_pid,))
        holder.close()
        assert asyncio.run(b.submit_single("roll_up", quick)) == "b"
    finally:
        release.set()
        a.close()
        b.close()


def test_worker_leases_are_shared_by_every_broker_on_the_database(pg_url: str) -> None:
    from broker.core.registry import Liveness

    a, b = PgStore(pg_url, pool_size=2), PgStore(pg_url, pool_size=2)
    try:
        on_a = Liveness(1_000, a.shared_table("worker_leases"))
        on_b = Liveness(1_000, b.shared_table("worker_leases"))
        on_a.beat("wrk_1", now=10_000)
        on_a.beat("wrk_2", now=10_000)
        assert sorted(on_b.live_ids(now=10_500)) == ["wrk_1", "wrk_2"]
        on_b.drop("wrk_2")
        on_b.drop("wrk_2")  # twice (two brokers): no error
        assert on_a.live_ids(now=10_500) == ["wrk_1"]
        assert on_a.live_ids(now=11_000) == [] and on_b.size == 0  # expired and dropped
    finally:
        a.close()
        b.close()


def test_a_database_error_swallowed_inside_a_batch_runs_the_batch_again(store: PgStore) -> None:
    """A metering batch runs its ops on their own and keeps going past one that raised
    (store/group.py), a database error too: that leaves the transaction aborted. The
    store runs the whole batch again (once the failure is gone, every op lands), rather
    than committing into an aborted transaction (InFailedSqlTransaction: INTERNAL)."""
    from broker.store.group import independently

    failures = [1]

    def flaky(tx: Tx) -> str:
        if failures:
            failures.pop()
            inner = tx
            while not hasattr(inner, "_conn"):  # the batch's overlay, the op's, the store's
                inner = inner._base  # type: ignore[attr-defined]
            inner._conn.execute("SELECT 1 / 0")  # type: ignore[attr-defined]
        tx.put("meta", "a", {"v": 1})
        return "a"

    def steady(tx: Tx) -> str:
        tx.get("meta", "a")
        tx.put("meta", "b", {"v": 2})
        return "b"

    assert store.submit_sync(independently([flaky, steady])) == ["a", "b"]
    assert store.read(lambda tx: (tx.get("meta", "a"), tx.get("meta", "b"))) == (
        {"v": 1}, {"v": 2})
