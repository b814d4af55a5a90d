"""MemoryStore, and the contract every Store must keep (reused by the LMDB tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.store import TABLES, MemoryStore, ReadOnlyError, Store, StoreClosed, Tx, records

from .test_buffered import keys, model_scan, scans, values


def example_record(table: str) -> dict:
    """The simplest record of a table's declared type: each required field zero-ish."""
    kind = records.TYPES[table]
    return _zero(kind) if isinstance(kind, type) else {"t": table}  # meta: free-form


def _zero(kind: type) -> dict:
    zero = {int: 0, str: "", bool: False, dict: {}, list: []}
    out = {}
    for f in msgspec.structs.fields(kind):
        if f.required:
            origin = getattr(f.type, "__origin__", f.type)
            out[f.name] = zero[origin] if origin in zero else _zero(origin)
    return out


class Boom(Exception):
    pass


def put(table: str, key: str, value: dict) -> Callable[[Tx], None]:
    def op(tx: Tx) -> None:
        tx.put(table, key, value)

    return op


class StoreContract:
    """Subclass with a `store` fixture to run these against a Store."""

    def test_submit_sync_and_read(self, store: Store) -> None:
        def op(tx: Tx) -> str:
            tx.put("meta", "a1", {"balance": 5})
            return "ok"

        assert store.submit_sync(op) == "ok"
        assert store.read(lambda tx: tx.get("meta", "a1")) == {"balance": 5}
        assert store.read(lambda tx: tx.get("meta", "missing")) is None

    def test_async_submit(self, store: Store) -> None:
        async def main() -> list[int]:
            def op(i: int) -> Callable[[Tx], int]:
                return lambda tx: tx.put("meta", f"{i:020d}", {"i": i}) or i

            return await asyncio.gather(*(store.submit(op(i)) for i in range(50)))

        assert asyncio.run(main()) == list(range(50))
        got = store.read(lambda tx: [r["i"] for _, r in tx.scan("meta")])
        assert got == list(range(50))

    def test_raising_op_changes_nothing(self, store: Store) -> None:
        store.submit_sync(put("meta", "keep", {"v": 1}))

        def op(tx: Tx) -> None:
            tx.put("meta", "new", {"v": 2})
            tx.delete("meta", "keep")
            raise Boom("no")

        with pytest.raises(Boom):
            store.submit_sync(op)
        assert store.read(lambda tx: list(tx.scan("meta"))) == [("keep", {"v": 1})]

    def test_op_sees_own_writes(self, store: Store) -> None:
        store.submit_sync(put("meta", "w1", {"v": 1}))

        def op(tx: Tx) -> list[tuple[str, dict]]:
            tx.put("meta", "w2", {"v": 2})
            tx.delete("meta", "w1")
            assert tx.get("meta", "w1") is None
            return list(tx.scan("meta"))

        assert store.submit_sync(op) == [("w2", {"v": 2})]

    def test_values_are_copied(self, store: Store) -> None:
        value = {"v": [1]}
        store.submit_sync(put("meta", "k", value))
        value["v"].append(2)
        got = store.read(lambda tx: tx.get("meta", "k"))
        got["v"].append(3)
        assert store.read(lambda tx: tx.get("meta", "k")) == {"v": [1]}

    def test_read_tx_is_read_only(self, store: Store) -> None:
        with pytest.raises(ReadOnlyError):
            store.read(lambda tx: tx.put("meta", "k", {}))
        with pytest.raises(ReadOnlyError):
            store.read(lambda tx: tx.delete("meta", "k"))

    @pytest.mark.parametrize(
        ("table", "key", "value", "error"),
        [
            ("nope", "k", {}, ValueError),
            ("meta", "", {}, ValueError),
            ("meta", "k" * 512, {}, ValueError),
            ("meta", "k", {"x": object()}, TypeError),
        ],
    )
    def test_bad_write_fails_only_its_op(
        self, store: Store, table: str, key: str, value: dict, error: type
    ) -> None:
        def op(tx: Tx) -> None:
            tx.put("meta", "first", {})
            tx.put(table, key, value)

        with pytest.raises(error):
            store.submit_sync(op)
        assert store.read(lambda tx: tx.get("meta", "first")) is None
        store.submit_sync(put("meta", "after", {}))  # the store still works

    def test_unknown_table_on_read(self, store: Store) -> None:
        with pytest.raises(ValueError):
            store.read(lambda tx: tx.get("nope", "k"))
        with pytest.raises(ValueError):
            store.read(lambda tx: tx.scan("nope"))

    def test_every_table_is_usable(self, store: Store) -> None:
        examples = {t: example_record(t) for t in TABLES}

        def op(tx: Tx) -> None:
            for t in TABLES:
                tx.put(t, "k", examples[t])

        store.submit_sync(op)
        assert store.read(lambda tx: {t: tx.get(t, "k") for t in TABLES}) == examples

    def test_a_record_not_of_its_tables_type_is_refused(self, store: Store) -> None:
        good = example_record("accounts")
        for bad in ({**good, "credits_posted": 1.5}, {**good, "no_overdraft": "yes"},
                    {k: v for k, v in good.items() if k != "kind"}, {**good, "typo": 1}):
            with pytest.raises(TypeError, match="not a accounts record"):
                store.submit_sync(put("accounts", "a", bad))
        assert store.read(lambda tx: tx.get("accounts", "a")) is None

    def test_closed_store_refuses_work(self, store: Store) -> None:
        store.close()
        with pytest.raises(StoreClosed):
            store.submit_sync(put("meta", "k", {}))
        with pytest.raises(StoreClosed):
            asyncio.run(store.submit(put("meta", "k", {})))
        with pytest.raises(StoreClosed):
            store.read(lambda tx: None)
        store.close()  # idempotent

    def test_scan_matches_model(self, store: Store) -> None:
        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(
            data=st.dictionaries(keys, values, max_size=15),
            queries=st.lists(scans, min_size=1, max_size=8),
        )
        def check(data: dict[str, dict], queries: list[dict]) -> None:
            def reset(tx: Tx) -> None:
                for k, _ in list(tx.scan("meta")):
                    tx.delete("meta", k)
                for k, v in data.items():
                    tx.put("meta", k, v)

            store.submit_sync(reset)
            for q in queries:
                assert store.read(lambda tx, q=q: list(tx.scan("meta", **q))) == (
                    model_scan(data, **q)
                )
                # The same scan inside an op, through the overlay with no writes.
                assert store.submit_sync(lambda tx, q=q: list(tx.scan("meta", **q))) == (
                    model_scan(data, **q)
                )

        check()


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    with MemoryStore() as s:
        yield s


class TestMemoryContract(StoreContract):
    pass


def test_snapshot_is_a_deep_copy_of_all_tables() -> None:
    store = MemoryStore()
    store.submit_sync(put("meta", "o1", {"name": "x", "tags": ["a"]}))
    snap = store.snapshot()
    assert set(snap) == set(TABLES)
    assert snap["meta"] == {"o1": {"name": "x", "tags": ["a"]}}
    snap["meta"]["o1"]["tags"].append("b")
    assert store.snapshot()["meta"] == {"o1": {"name": "x", "tags": ["a"]}}


def test_snapshot_unchanged_by_failing_op() -> None:
    store = MemoryStore()
    store.submit_sync(put("meta", "o1", {"n": 1}))
    before = store.snapshot()

    def op(tx: Tx) -> None:
        tx.put("meta", "o2", {})
        tx.put("meta", "o1", {"n": 2})
        raise Boom

    with pytest.raises(Boom):
        asyncio.run(store.submit(op))
    assert store.snapshot() == before


def test_keys_sort_by_code_point_like_lmdb_bytes() -> None:
    store = MemoryStore()
    ks = ["b", "a", "\u00e9", "\uffff", "\U0010ffff", "aa", "Z"]

    def op(tx: Tx) -> None:
        for k in ks:
            tx.put("meta", k, {})

    store.submit_sync(op)
    got = store.read(lambda tx: [k for k, _ in tx.scan("meta")])
    assert got == sorted(ks, key=lambda k: k.encode())
