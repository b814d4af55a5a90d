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

    def increment_as_a_client_does(store: PgStore) -> None:
        # Eight threads on one row: on a loaded machine one can lose every bounded
        # retry; that is UNAVAILABLE with nothing written, which a client retries.
        for _ in range(20):
            try:
                return store.submit_sync(increment)
            except BrokerError as error:
                assert error.reason == "STORE_UNAVAILABLE"
        raise AssertionError("never committed")

    try:
        in_threads(8, lambda i: [increment_as_a_client_does(a if i % 2 else b)
                                 for _ in range(10)])
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
        pid = holder.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            # (with a timeout: it waits until the backend is gone, and its lock with it)
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
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


def test_rate_buckets_are_shared_and_count_like_the_ones_in_memory(pg_url: str) -> None:
    """The database's buckets (one statement per request) decide as core/rate_limits.py
    does in memory, request for request, and two brokers take from one bucket."""
    import random

    from broker.core.rate_limits import RequestLimiter, RequestRate
    from common.errors import BrokerError

    a, b = PgStore(pg_url, pool_size=2), PgStore(pg_url, pool_size=2)

    def outcome(limiter: RequestLimiter, key: str, rate: RequestRate, now: int):
        try:
            limiter.admit(key, rate, now)
            return None
        except BrokerError as error:
            assert error.reason == "RATE_LIMITED"
            return error.retry_after_ms

    try:
        on_a = RequestLimiter(shared=a.rate_buckets())
        on_b = RequestLimiter(shared=b.rate_buckets())
        local = RequestLimiter()
        rng = random.Random(7)
        now = 1_800_000_000_000
        rates = [RequestRate(60, 2), RequestRate(600, 5), RequestRate(1, 1),
                 RequestRate(1_000_000, 1_000_000)]
        refused = 0
        for _ in range(400):
            key = f"key_{rng.randrange(3)}"
            rate = rates[rng.randrange(len(rates))]
            now += rng.choice((0, 1, 7, 250, 1000, 90_000, -5))  # a clock step back too
            shared = on_a if rng.random() < 0.5 else on_b  # either broker
            expected = outcome(local, key, rate, now)
            assert outcome(shared, key, rate, now) == expected, (key, rate, now)
            refused += expected is not None
        assert refused > 20  # the limits were reached, not only admitted
        # A key's limit holds across brokers: a burst of 2, taken on A then B, then none.
        rate = RequestRate(60, 2)
        on_a.admit("key_burst", rate, now)
        on_b.admit("key_burst", rate, now)
        for limiter in (on_a, on_b):
            with pytest.raises(BrokerError):
                limiter.admit("key_burst", rate, now)
        assert on_a.size == 0  # nothing kept in the broker's memory
        # Buckets that refilled are dropped by the sweep; the others stay.
        before = len(a.rate_buckets())
        kept = before - on_b.prune(now)
        assert 1 <= kept <= before  # key_burst is empty: kept
        assert on_a.prune(now + 10**9) == kept  # all refilled by then
        assert len(a.rate_buckets()) == 0
    finally:
        a.close()
        b.close()


def test_migrate_adds_the_shared_tables_to_an_older_layout(pg_url: str) -> None:
    """A layout-2 database (before rate_buckets): refused by serve, brought up to date by
    `broker migrate` (PgStore(migrate=True)) without touching the ledger's rows."""
    with PgStore(pg_url, pool_size=2) as s:
        s.submit_sync(put("meta", "kept", {"v": 1}))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE rate_buckets")
        conn.execute("UPDATE broker_layout SET version = 2")
    with pytest.raises(StoreOpenError, match="has table layout 2.*run `broker migrate`"):
        PgStore(pg_url)
    PgStore(pg_url, migrate=True).close()
    with PgStore(pg_url, pool_size=2) as s:
        assert s.read(lambda tx: tx.get("meta", "kept")) == {"v": 1}
        assert s.rate_buckets().take("key_1", 60, 1, 60_000, 1) is None
        assert s.rate_buckets().take("key_1", 60, 1, 60_000, 1) == 1000


def test_migrate_adds_the_refund_indexes_to_a_layout_3_database(pg_url: str) -> None:
    """A layout-3 database (before owner_refunds and provider_refunds, which statements
    read refunds through): refused by serve, given the tables by `broker migrate`."""
    with PgStore(pg_url, pool_size=2) as s:
        s.submit_sync(put("meta", "kept", {"v": 1}))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE t_owner_refunds")
        conn.execute("DROP TABLE t_provider_refunds")
        conn.execute("UPDATE broker_layout SET version = 3")
    with pytest.raises(StoreOpenError, match="has table layout 3.*run `broker migrate`"):
        PgStore(pg_url)
    PgStore(pg_url, migrate=True).close()
    row = {"amount": 5, "payout": 4, "fee": 1}
    with PgStore(pg_url, pool_size=2) as s:
        assert s.read(lambda tx: tx.get("meta", "kept")) == {"v": 1}
        s.submit_sync(put("provider_refunds", "prv_1/0000000000000000/rfd_1", row))
        assert s.read(lambda tx: list(tx.scan("provider_refunds"))) == [
            ("prv_1/0000000000000000/rfd_1", row)]


def test_a_commit_that_writes_a_signal_table_wakes_every_listening_broker(pg_url: str) -> None:
    """LISTEN/NOTIFY (pg_signals.py): a commit that writes a watched table reaches the
    other broker's listener within a second; other writes, and ops that fail, send
    nothing; a listener whose connection is killed listens again by itself."""
    a, b = PgStore(pg_url, pool_size=2), PgStore(pg_url, pool_size=2)
    woke = {"a": threading.Event(), "b": threading.Event()}
    try:
        a.listen({"alerts"}, woke["a"].set)
        b.listen({"alerts"}, woke["b"].set)
        for store in (a, b):
            assert store.listener is not None and store.listener.listening.wait(WAIT)
        time.sleep(0.3)  # each fires once on (re)connecting: for what it may have missed
        for event in woke.values():
            event.clear()
        a.submit_sync(put("meta", "x", {"v": 1}))  # not a watched table

        def fails(tx: Tx) -> None:
            tx.put("alerts", "00000000000000000001", _alert())
            raise KeyError("refused")

        with pytest.raises(KeyError):
            a.submit_sync(fails)
        assert not woke["b"].wait(0.5)
        started = time.monotonic()
        a.submit_sync(lambda tx: tx.put("alerts", "00000000000000000002", _alert()))
        assert woke["b"].wait(1.0), "no signal within a second"
        assert woke["a"].is_set() or woke["a"].wait(1.0)  # its own commit too
        print(f"signal after {1000 * (time.monotonic() - started):.1f} ms")
        # Kill the listening connections: each listens again and fires once.
        woke["b"].clear()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query = 'LISTEN broker_changes'").fetchall()
        assert len(killed) == 2
        assert woke["b"].wait(WAIT)  # listening again
        deadline = time.monotonic() + WAIT
        while True:  # (the listener may not have noticed the kill yet when woke fired)
            woke["b"].clear()
            a.submit_sync(lambda tx: tx.put("alerts", "00000000000000000003", _alert()))
            if woke["b"].wait(1.0):
                break
            assert time.monotonic() < deadline
        assert b.listener is not None and b.listener.received >= 2
    finally:
        a.close()
        b.close()


def _alert() -> dict:
    return {"alert_id": "alr_1", "seq": 1, "kind": "denial_run", "owner_id": "own_1",
            "wallet_id": "wal_1", "message": "m", "observed": 0, "baseline": 0,
            "subject": "", "wallet_frozen": False, "create_ms": 1}


def test_sweeps_claim_due_rows_and_skip_those_another_broker_holds(pg_url: str) -> None:
    """`base.due` on PostgreSQL (FOR UPDATE SKIP LOCKED): while broker A's sweep holds
    the rows it claimed, broker B's sweep takes the others (or none), without waiting
    and without a conflict; rows deleted in the op's own overlay are not returned; a
    read-only snapshot cannot claim."""
    from broker.store.base import due
    from broker.store.buffered import ReadOnlyError

    a, b = PgStore(pg_url, pool_size=2), PgStore(pg_url, pool_size=2)
    keys = [f"{n:020d}/h{n}" for n in range(1, 11)]
    a.submit_sync(lambda tx: [tx.put("hold_expiry", k, {}) for k in keys])
    inside, release = threading.Event(), threading.Event()

    def sweep_a(tx: Tx) -> list[str]:
        rows = [k for k, _ in due(tx, "hold_expiry", f"{99:020d}", 4)]
        inside.set()
        assert release.wait(WAIT)
        for k in rows:
            tx.delete("hold_expiry", k)
        return rows

    def sweep_b(tx: Tx) -> list[str]:
        rows = [k for k, _ in due(tx, "hold_expiry", f"{99:020d}", 100)]
        for k in rows:
            tx.delete("hold_expiry", k)
        return rows

    try:
        got: dict[str, list[str]] = {}
        first = threading.Thread(target=lambda: got.update(a=a.submit_sync(sweep_a)))
        first.start()
        assert inside.wait(WAIT)
        started = time.monotonic()
        got["b"] = b.submit_sync(sweep_b)  # while A still holds its four
        assert time.monotonic() - started < 1.0  # it did not wait for A
        assert b.submit_sync(sweep_b) == []  # A's four are still claimed: skipped
        release.set()
        first.join(WAIT)
        assert got["a"] == keys[:4] and got["b"] == keys[4:]
        assert a.stats["retries"] == b.stats["retries"] == 0
        assert a.read(lambda tx: list(tx.scan("hold_expiry"))) == []
        # Through an op's overlay: what it deleted is gone, what it put is there.
        a.submit_sync(lambda tx: [tx.put("hold_expiry", k, {}) for k in keys[:3]])

        def overlay(tx: Tx) -> list[str]:
            tx.delete("hold_expiry", keys[0])
            tx.put("hold_expiry", f"{50:020d}/new", {})
            return [k for k, _ in due(tx, "hold_expiry", f"{99:020d}", 3)]

        assert a.submit_sync(overlay) == [keys[1], keys[2], f"{50:020d}/new"]
        with pytest.raises(ReadOnlyError):
            a.read(lambda tx: due(tx, "hold_expiry", f"{99:020d}", 3))
    finally:
        release.set()
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
