"""LmdbStore.commit_observer: told the size and commit time of every batch (metrics),
and never able to stop the writer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker.store import LmdbStore

from .test_lmdb_store import submit_all
from .test_memory_store import put


def test_the_observer_sees_every_batch(tmp_path: Path) -> None:
    seen: list[tuple[int, float, bool]] = []
    with LmdbStore(tmp_path / "db", durable=True) as store:
        store.commit_observer = lambda size, seconds, ok: seen.append((size, seconds, ok))
        store.submit_sync(put("meta", "a", {}))
        asyncio.run(submit_all(store, [put("meta", f"k{i}", {}) for i in range(5)]))
    # One op; then the op holding the writer; then the five queued behind it, in one batch.
    assert [(size, ok) for size, _, ok in seen] == [(1, True), (1, True), (5, True)]
    assert all(0 < seconds < 10 for _, seconds, _ in seen)


def test_a_failed_commit_is_reported(tmp_path: Path) -> None:
    seen: list[tuple[int, bool]] = []
    with LmdbStore(tmp_path / "db", map_size=1 << 20, durable=False) as store:
        store.commit_observer = lambda size, seconds, ok: seen.append((size, ok))
        huge = {"blob": "x" * (2 << 20)}  # larger than the whole map
        asyncio.run(submit_all(store, [put("meta", "a", {}), put("meta", "huge", huge)]))
    assert seen[-1] == (2, False)


def test_a_broken_observer_does_not_stop_the_writer(tmp_path: Path) -> None:
    def broken(size: int, seconds: float, ok: bool) -> None:
        raise RuntimeError("metrics are broken")

    with LmdbStore(tmp_path / "db", durable=False) as store:
        store.commit_observer = broken
        store.submit_sync(put("meta", "a", {}))
        store.submit_sync(put("meta", "b", {}))
        assert store.read(lambda tx: [k for k, _ in tx.scan("meta")]) == ["a", "b"]
