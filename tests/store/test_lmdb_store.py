"""LmdbStore: the Store contract, group commit, durability and the data-dir lock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from broker.store import DataDirLocked, LmdbStore, StoreClosed, Tx, lmdb_store
from broker.store.lmdb_store import RuntimeTables

from .test_memory_store import Boom, StoreContract, put

REPO = Path(__file__).resolve().parents[2]
WAIT = 10  # seconds; generous, only reached when something is broken


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    with LmdbStore(tmp_path / "db", durable=False) as s:
        yield s


class TestLmdbContract(StoreContract):
    pass


@contextlib.asynccontextmanager
async def writer_held(store: LmdbStore) -> AsyncIterator[None]:
    """Keep the writer busy inside an op; what is submitted meanwhile queues up and
    runs as one batch once the block exits. (The op comes from another thread: the
    ops of this loop would run on the loop, and block it.)"""
    gate, entered = threading.Event(), threading.Event()

    def blocker(tx: Tx) -> None:
        entered.set()
        gate.wait(WAIT)

    task = asyncio.ensure_future(asyncio.to_thread(store.submit_sync, blocker))
    assert await asyncio.to_thread(entered.wait, WAIT)
    try:
        yield
    finally:
        gate.set()
        await task


async def submit_all(store: LmdbStore, ops: list[Callable[[Tx], object]]) -> list[object]:
    """Submit in this order, as one batch, and gather the outcomes."""
    async with writer_held(store):
        tasks = [asyncio.create_task(store.submit(op)) for op in ops]
        await asyncio.sleep(0)  # each task runs up to its enqueue, in order
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_raising_op_in_a_batch_is_isolated(store: LmdbStore) -> None:
    def first(tx: Tx) -> str:
        tx.put("meta", "a", {"n": 1})
        return "first"

    def bad(tx: Tx) -> None:
        assert tx.get("meta", "a") == {"n": 1}  # sees the earlier op of its batch
        tx.put("meta", "b", {"n": 2})
        tx.delete("meta", "a")
        raise Boom("bad")

    def last(tx: Tx) -> tuple[object, object]:
        seen = (tx.get("meta", "a"), tx.get("meta", "b"))
        tx.put("meta", "c", {"n": 3})
        return seen

    commits = store.stats["commits"]
    results = asyncio.run(submit_all(store, [first, bad, last]))
    assert results[0] == "first"
    assert isinstance(results[1], Boom)
    assert results[2] == ({"n": 1}, None)  # bad's writes never reached the batch
    assert store.stats["last_batch_size"] == 3
    assert store.stats["commits"] == commits + 2  # the blocker's batch, then ours
    got = store.read(lambda tx: list(tx.scan("meta")))
    assert got == [("a", {"n": 1}), ("c", {"n": 3})]


def test_group_commit_batches_concurrent_ops(tmp_path: Path) -> None:
    n = 2000

    def bump(i: int) -> Callable[[Tx], int]:
        def op(tx: Tx) -> int:
            count = (tx.get("meta", "counter") or {"n": 0})["n"] + 1
            tx.put("meta", "counter", {"n": count})
            tx.put("meta", f"{i:020d}", {"i": i, "count": count})
            return count

        return op

    async def main() -> list[int]:
        return await asyncio.gather(*(store.submit(bump(i)) for i in range(n)))

    with LmdbStore(tmp_path / "db", durable=True) as store:
        results = asyncio.run(main())
        stats = dict(store.stats)
        journal = store.read(lambda tx: [r for _, r in tx.scan("meta", "0")])
    assert results == list(range(1, n + 1))  # FIFO, and each op saw all before it
    assert journal == [{"i": i, "count": i + 1} for i in range(n)]
    assert stats["ops"] == n
    assert stats["commits"] < n
    assert stats["max_batch_size"] > 1
    assert stats["commit_seconds"] > 0


def test_runtime_tables_are_shared_by_processes(tmp_path: Path) -> None:
    runtime = RuntimeTables(tmp_path / "runtime")
    runtime.leases["wrk_a"] = 1_000
    runtime.rate_buckets["key_1"] = [5, 7]
    other = _python(
        "import sys; from broker.store.lmdb_store import RuntimeTables;"
        "t = RuntimeTables(sys.argv[1]); print(dict(t.leases.items()), t.rate_buckets['key_1']);"
        "t.leases['wrk_b'] = 2_000; del t.leases['wrk_a'];"
        "[t.rate_buckets.update_value('n', lambda v: ((v or 0) + 1, None)) for _ in range(500)]",
        tmp_path / "runtime")
    for _ in range(500):  # at the same time as the other process: no update is lost
        runtime.rate_buckets.update_value("n", lambda v: ((v or 0) + 1, None))
    out, _ = other.communicate(timeout=WAIT)
    assert other.returncode == 0
    assert out.strip() == "{'wrk_a': 1000} [5, 7]"
    assert runtime.leases.items() == [("wrk_b", 2_000)]
    assert runtime.leases.pop("wrk_a", None) is None
    assert len(runtime.leases) == 1
    assert runtime.rate_buckets["n"] == 1_000
    assert runtime.rate_buckets.update_value("n", lambda v: (0, v)) == 1_000
    runtime.close()


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with LmdbStore(path) as store:
        store.submit_sync(put("meta", "t1", {"amount": 10}))
        store.submit_sync(put("meta", "t2", {"amount": 20}))
        store.submit_sync(lambda tx: tx.delete("meta", "t1"))
    with LmdbStore(path) as store:
        assert store.read(lambda tx: list(tx.scan("meta"))) == [("t2", {"amount": 20})]


def test_close_runs_everything_already_queued(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = LmdbStore(path)

    async def main() -> list[object]:
        tasks = [
            asyncio.create_task(store.submit(put("meta", f"{i:03d}", {"i": i})))
            for i in range(100)
        ]
        await asyncio.sleep(0)  # all queued
        store.close()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [None] * 100
    with LmdbStore(path) as reopened:
        assert reopened.read(lambda tx: len(list(tx.scan("meta")))) == 100


def test_second_store_on_same_dir_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with LmdbStore(path, durable=False):
        with pytest.raises(DataDirLocked) as info:
            LmdbStore(path)
        assert info.value.pid == os.getpid()
        assert str(path) in str(info.value)
        assert f"pid {os.getpid()}" in str(info.value)
    LmdbStore(path).close()  # released on close


HOLD = """
import sys
from broker.store import LmdbStore
store = LmdbStore(sys.argv[1], durable=False)
print("ready", flush=True)
sys.stdin.readline()
store.close()
"""

TRY = """
import sys
from broker.store import DataDirLocked, LmdbStore
try:
    LmdbStore(sys.argv[1])
except DataDirLocked as exc:
    print(exc)
    sys.exit(3)
"""


def _python(script: str, path: Path, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "db"
    child = _python(HOLD, path, stdin=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(DataDirLocked) as info:
            LmdbStore(path)
        assert info.value.pid == child.pid
        assert f"pid {child.pid}" in str(info.value)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(WAIT) == 0
    finally:
        if child.poll() is None:
            child.kill()
    LmdbStore(path).close()


def test_lock_refuses_another_process(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with LmdbStore(path, durable=False):
        child = _python(TRY, path)
        out, _ = child.communicate(timeout=WAIT)
    assert child.returncode == 3
    assert str(path) in out
    assert f"pid {os.getpid()}" in out


def test_reads_do_not_wait_for_the_writer(store: LmdbStore) -> None:
    store.submit_sync(put("meta", "old", {"v": 1}))
    gate, entered = threading.Event(), threading.Event()

    def slow(tx: Tx) -> str:
        entered.set()
        gate.wait(WAIT)
        return "slow"

    def read_both(tx: Tx) -> tuple[object, object]:
        return tx.get("meta", "old"), tx.get("meta", "new")

    async def main() -> tuple[object, list[object]]:
        # Batch: "new" is flushed into the write txn, then the writer sits in `slow`.
        async with writer_held(store):
            # `slow` from another thread: the batch is not all this loop's, so the
            # writer runs it, and this loop stays free to read.
            tasks = [asyncio.create_task(store.submit(put("meta", "new", {"v": 2})))]
            await asyncio.sleep(0)
            tasks.append(asyncio.create_task(asyncio.to_thread(store.submit_sync, slow)))
            await asyncio.sleep(0.2)
        try:
            assert await asyncio.to_thread(entered.wait, WAIT)
            seen = await asyncio.wait_for(asyncio.to_thread(store.read, read_both), 5)
        finally:
            gate.set()
        return seen, await asyncio.gather(*tasks)

    seen, results = asyncio.run(main())
    assert seen == ({"v": 1}, None)  # a snapshot: uncommitted writes are invisible
    assert results == [None, "slow"]
    assert store.read(read_both) == ({"v": 1}, {"v": 2})


def test_failed_commit_fails_the_whole_batch(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "db", map_size=1 << 20, durable=False) as store:
        huge = {"blob": "x" * (2 << 20)}  # larger than the whole map
        ops = [put("meta", "a", {}), put("meta", "huge", huge), put("meta", "b", {})]
        results = asyncio.run(submit_all(store, ops))
        assert all(isinstance(r, Exception) for r in results)
        assert results[0] is results[1] is results[2]  # the one commit error
        # Out of room: StorageFull (the API answers STORAGE_FULL), caused by LMDB's error.
        assert type(results[0]).__name__ == "StorageFull"
        assert type(results[0].__cause__).__name__ == "MapFullError"
        assert store.storage_full
        assert store.stats["failed_commits"] == 1
        assert store.read(lambda tx: list(tx.scan("meta"))) == []
        store.submit_sync(put("meta", "after", {}))  # the writer lives on
        assert store.read(lambda tx: [k for k, _ in tx.scan("meta")]) == ["after"]
        assert not store.storage_full  # a write went through, with room on the disk


def test_cancelled_caller_does_not_break_the_writer(store: LmdbStore) -> None:
    async def main() -> None:
        async with writer_held(store):
            task = asyncio.create_task(store.submit(put("meta", "k", {})))
            await asyncio.sleep(0)
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.submit(put("meta", "later", {}))

    asyncio.run(main())
    # Once queued, an op runs even if its caller went away.
    assert store.read(lambda tx: [k for k, _ in tx.scan("meta")]) == ["k", "later"]


def test_nested_submit_and_close_from_an_op_fail_fast(store: LmdbStore) -> None:
    with pytest.raises(RuntimeError, match="deadlock"):
        store.submit_sync(lambda tx: store.submit_sync(put("meta", "k", {})))
    with pytest.raises(RuntimeError, match="deadlock"):
        store.submit_sync(lambda tx: store.close())
    store.submit_sync(put("meta", "k", {}))


def test_ops_of_one_event_loop_run_on_it_and_others_on_the_writer(store: LmdbStore) -> None:
    def where(tx: Tx) -> str:
        return threading.current_thread().name

    async def main() -> tuple[str, list[object]]:
        alone = await store.submit(where)
        async with writer_held(store):  # a batch of this loop's op and another thread's
            mixed = [asyncio.create_task(store.submit(where))]
            await asyncio.sleep(0)
            mixed.append(asyncio.create_task(asyncio.to_thread(store.submit_sync, where)))
            await asyncio.sleep(0.2)
        return alone, await asyncio.gather(*mixed)

    alone, mixed = asyncio.run(main())
    assert alone == threading.current_thread().name  # asyncio.run's loop: this thread
    assert mixed == ["lmdb-writer", "lmdb-writer"]
    assert store.submit_sync(where) == "lmdb-writer"


def test_a_big_batch_runs_on_the_loop_a_few_ops_at_a_time(
        store: LmdbStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """One transaction and one commit, but the loop serves between its handed-off
    chunks (HANDOFF_MAX_OPS), so a big batch does not keep it from serving for long."""
    monkeypatch.setattr(lmdb_store, "HANDOFF_MAX_OPS", 2)
    ticks = 0

    def op(name: str) -> Callable[[Tx], int]:
        def run(tx: Tx) -> int:
            tx.put("meta", name, {})
            return ticks
        return run

    async def main() -> list[int]:
        nonlocal ticks
        stop = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        async with writer_held(store):
            tasks = [asyncio.create_task(store.submit(op(f"k{i}"))) for i in range(5)]
            await asyncio.sleep(0.2)
        seen = await asyncio.gather(*tasks)
        stop.set()
        await ticker
        return seen

    commits = store.stats["commits"]
    seen = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert seen[0] == seen[1] < seen[2] == seen[3] < seen[4]  # chunks of 2, 2 and 1
    assert store.stats["commits"] - commits == 2  # the blocker's batch, then these five
    assert store.read(lambda tx: [k for k, _ in tx.scan("meta")]) == [f"k{i}" for i in range(5)]


def test_a_loop_blocked_on_the_store_gets_its_ops_run_by_the_writer(store: LmdbStore) -> None:
    """The writer offers a batch to its loop; a loop that blocks on the store instead
    (submit_sync, close) would never take it: the writer takes it back and runs it."""
    async def main() -> object:
        task = asyncio.create_task(store.submit(put("meta", "from-the-loop", {})))
        await asyncio.sleep(0)  # queued
        store.submit_sync(put("meta", "blocking", {}))  # blocks this loop's thread
        return await asyncio.wait_for(task, WAIT)

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) is None
    assert store.read(lambda tx: [k for k, _ in tx.scan("meta")]) == ["blocking",
                                                                     "from-the-loop"]


def test_close_from_a_loop_with_its_ops_queued_runs_them(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db", durable=False)

    async def main() -> object:
        task = asyncio.create_task(store.submit(put("meta", "queued", {})))
        await asyncio.sleep(0)
        store.close()  # on the loop's thread: everything queued still runs
        return await task

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) is None
    with LmdbStore(tmp_path / "db", durable=False) as again:
        assert again.read(lambda tx: tx.get("meta", "queued")) == {}


def test_nested_submit_from_an_op_on_the_loop_fails_fast(store: LmdbStore) -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="deadlock"):
            await store.submit(lambda tx: store.submit_sync(put("meta", "k", {})))
        with pytest.raises(RuntimeError, match="deadlock"):
            await store.submit(lambda tx: store.close())

    asyncio.run(asyncio.wait_for(main(), WAIT))
    store.submit_sync(put("meta", "k", {}))


def test_submit_after_close_raises(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db")
    store.close()
    with pytest.raises(StoreClosed):
        store.submit_sync(put("meta", "k", {}))
    with pytest.raises(StoreClosed):
        asyncio.run(store.submit(put("meta", "k", {})))
    with pytest.raises(StoreClosed):
        store.read(lambda tx: None)
