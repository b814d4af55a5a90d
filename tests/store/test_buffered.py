"""BufferedTx against a plain-dict model: reads, scans and flush."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.store.base import Record
from broker.store.buffered import BufferedTx, key_range, prefix_end

# Few characters, so prefixes and ranges collide often; the odd ones exercise the
# prefix upper bound (code point carry, the surrogate gap, the maximum code point).
ALPHABET = "ab\u00e9\ud7ff\uffff\U0010ffff"
keys = st.text(ALPHABET, min_size=1, max_size=4)
bounds = st.none() | st.text(ALPHABET, max_size=3)
values = st.fixed_dictionaries({"v": st.integers(0, 1000)})


def model_scan(
    data: dict[str, Record],
    prefix: str = "",
    *,
    start: str | None = None,
    stop: str | None = None,
    reverse: bool = False,
    limit: int | None = None,
) -> list[tuple[str, Record]]:
    """The definition of scan, written the obvious way."""
    hits = sorted(
        k
        for k in data
        if k.startswith(prefix) and (start is None or k >= start) and (stop is None or k < stop)
    )
    if reverse:
        hits.reverse()
    if limit is not None:
        hits = hits[:limit]
    return [(k, data[k]) for k in hits]


class DictTx:
    """A trivially correct base Tx (no put_encoded: exercises the generic flush)."""

    def __init__(self, data: dict[str, dict[str, Record]] | None = None) -> None:
        self.data: dict[str, dict[str, Record]] = data or {}

    def get(self, table: str, key: str) -> Record | None:
        return self.data.get(table, {}).get(key)

    def put(self, table: str, key: str, value: Record) -> None:
        self.data.setdefault(table, {})[key] = value

    def delete(self, table: str, key: str) -> None:
        self.data.get(table, {}).pop(key, None)

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
        return iter(
            model_scan(
                self.data.get(table, {}),
                prefix,
                start=start,
                stop=stop,
                reverse=reverse,
                limit=limit,
            )
        )


scans = st.fixed_dictionaries(
    {
        "prefix": st.text(ALPHABET, max_size=2),
        "start": bounds,
        "stop": bounds,
        "reverse": st.booleans(),
        "limit": st.none() | st.integers(0, 6),
    }
)
actions = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("scan"), scans),
    st.tuples(st.just("get"), keys),
)


@settings(max_examples=400, deadline=None)
@given(base=st.dictionaries(keys, values, max_size=12), script=st.lists(actions, max_size=40))
def test_overlay_matches_dict_model(
    base: dict[str, Record], script: list[tuple[object, ...]]
) -> None:
    base_tx = DictTx({"meta": dict(base)})
    tx = BufferedTx(base_tx)
    model = dict(base)
    for action in script:
        match action:
            case ("put", key, value):
                tx.put("meta", key, value)
                model[key] = value
            case ("delete", key):
                tx.delete("meta", key)
                model.pop(key, None)
            case ("get", key):
                assert tx.get("meta", key) == model.get(key)
            case ("scan", kwargs):
                assert list(tx.scan("meta", **kwargs)) == model_scan(model, **kwargs)
    assert base_tx.data["meta"] == base  # nothing reaches the base before flush
    tx.flush()
    assert base_tx.data["meta"] == model
    assert len(tx) == 0


@settings(max_examples=200, deadline=None)
@given(
    base=st.dictionaries(keys, values, max_size=8),
    outer=st.lists(st.tuples(keys, st.none() | values), max_size=8),
    inner=st.lists(st.tuples(keys, st.none() | values), max_size=8),
    query=scans,
)
def test_nested_overlays(
    base: dict[str, Record],
    outer: list[tuple[str, Record | None]],
    inner: list[tuple[str, Record | None]],
    query: dict[str, object],
) -> None:
    """An overlay over an overlay (a savepoint) behaves like one dict too."""
    base_tx = DictTx({"meta": dict(base)})
    tx1 = BufferedTx(base_tx)
    model = dict(base)
    for writes, tx in ((outer, tx1), (inner, BufferedTx(tx1))):
        for key, value in writes:
            if value is None:
                tx.delete("meta", key)
                model.pop(key, None)
            else:
                tx.put("meta", key, value)
                model[key] = value
        assert list(tx.scan("meta", **query)) == model_scan(model, **query)  # type: ignore[arg-type]
        if tx is not tx1:
            tx.flush()  # inner into outer
    assert list(tx1.scan("meta", **query)) == model_scan(model, **query)  # type: ignore[arg-type]
    tx1.flush()
    assert base_tx.data["meta"] == model


@given(prefix=st.text(ALPHABET, max_size=3), key=st.text(ALPHABET, max_size=4))
def test_prefix_end_bounds_exactly_the_prefixed_keys(prefix: str, key: str) -> None:
    end = prefix_end(prefix)
    inside = prefix <= key and (end is None or key < end)
    assert inside == key.startswith(prefix)


@given(prefix=st.text(ALPHABET, max_size=2), start=bounds, stop=bounds, key=keys)
def test_key_range_is_the_scan_filter(
    prefix: str, start: str | None, stop: str | None, key: str
) -> None:
    lo, hi = key_range(prefix, start, stop)
    expected = bool(model_scan({key: {}}, prefix, start=start, stop=stop))
    assert (lo <= key and (hi is None or key < hi)) == expected


def test_reads_are_copies_and_puts_are_snapshots() -> None:
    tx = BufferedTx(DictTx())
    value = {"n": 1, "tags": (1, 2)}
    tx.put("meta", "k", value)
    value["n"] = 2  # after put: must not leak in
    got = tx.get("meta", "k")
    assert got == {"n": 1, "tags": [1, 2]}  # JSON-normalised, as LMDB would return it
    got["n"] = 3  # mutating a read must not change the overlay
    assert tx.get("meta", "k") == {"n": 1, "tags": [1, 2]}


def test_deleted_base_key_is_hidden_and_can_come_back() -> None:
    base = DictTx({"meta": {"a": {"v": 1}, "b": {"v": 2}}})
    tx = BufferedTx(base)
    tx.delete("meta", "a")
    assert tx.get("meta", "a") is None
    assert list(tx.scan("meta")) == [("b", {"v": 2})]
    tx.put("meta", "a", {"v": 9})
    assert list(tx.scan("meta", reverse=True)) == [("b", {"v": 2}), ("a", {"v": 9})]


def test_writes_during_a_scan_do_not_disturb_it() -> None:
    tx = BufferedTx(DictTx({"hold_expiry": {f"{i:02d}": {} for i in range(5)}}))
    tx.put("hold_expiry", "02x", {})
    seen = []
    for key, _ in tx.scan("hold_expiry"):
        seen.append(key)
        tx.delete("hold_expiry", key)
        tx.put("hold_expiry", key + "z", {})
    assert seen == ["00", "01", "02", "02x", "03", "04"]
    assert [k for k, _ in tx.scan("hold_expiry")] == sorted(k + "z" for k in seen)


def test_discard_drops_pending_writes() -> None:
    base = DictTx({"meta": {"a": {"v": 1}}})
    tx = BufferedTx(base)
    tx.put("meta", "b", {})
    tx.delete("meta", "a")
    tx.discard()
    tx.flush()
    assert base.data == {"meta": {"a": {"v": 1}}}


@pytest.mark.parametrize(
    ("table", "key", "value", "error"),
    [
        ("nope", "k", {}, ValueError),  # unknown table
        ("meta", "", {}, ValueError),  # LMDB refuses empty keys
        ("meta", "x" * 512, {}, ValueError),  # and keys over 511 bytes
        ("meta", "\ud800", {}, ValueError),  # not encodable as utf-8
        ("meta", 7, {}, TypeError),
        ("meta", "k", [1], TypeError),  # records are dicts
        ("accounts", "k", {"x": {1, 2}}, TypeError),  # not an account record
        ("meta", "k", {"x": float("nan")}, ValueError),  # not JSON either
    ],
)
def test_bad_writes_fail_at_put_time(table: str, key: object, value: object, error: type) -> None:
    tx = BufferedTx(DictTx())
    with pytest.raises(error):
        tx.put(table, key, value)  # type: ignore[arg-type]
    assert len(tx) == 0


def test_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError):
        BufferedTx(DictTx()).scan("meta", limit=-1)
