"""Every table the broker keeps in memory per caller or per worker has a bound
(docs/reliability.md, "Memory"): request-rate buckets, worker leases, watch streams."""

from __future__ import annotations

import pytest

from broker.api.watch import Changes
from broker.core import registry
from broker.core.rate_limits import MAX_BUCKETS, PRUNE_TO, RequestLimiter, RequestRate
from common.errors import BrokerError, Code

SLOW = RequestRate(per_minute=1, burst=5)  # a bucket takes 5 minutes to refill


def test_rate_buckets_stay_bounded_when_every_key_is_busy():
    limiter = RequestLimiter()
    for i in range(MAX_BUCKETS + 500):  # no bucket refills during this: none is idle
        limiter.admit(f"key_{i}", SLOW, now=i)
        assert limiter.size <= MAX_BUCKETS
    assert limiter.size >= PRUNE_TO
    # The least recently used went first; the last key still has its (drained) bucket.
    last = f"key_{MAX_BUCKETS + 499}"
    for _ in range(4):
        limiter.admit(last, SLOW, now=MAX_BUCKETS + 500)
    with pytest.raises(BrokerError) as caught:
        limiter.admit(last, SLOW, now=MAX_BUCKETS + 500)
    assert (caught.value.code, caught.value.reason) == (Code.RESOURCE_EXHAUSTED, "RATE_LIMITED")


def test_idle_buckets_are_forgotten_before_busy_ones():
    limiter = RequestLimiter()
    busy = RequestRate(per_minute=1, burst=1)
    limiter.admit("busy", busy, now=0)  # empty for a minute
    for i in range(MAX_BUCKETS - 1):  # these refill within a millisecond
        limiter.admit(f"idle_{i}", RequestRate(per_minute=60_000, burst=100), now=1)
    assert limiter.size == MAX_BUCKETS
    limiter.admit("last", busy, now=10)  # one too many: the idle ones go, all of them
    assert limiter.size == 2
    with pytest.raises(BrokerError):
        limiter.admit("busy", busy, now=20)  # still remembered, still empty


def test_shared_buckets_are_bounded_too(tmp_path):
    from broker.store.lmdb_store import RuntimeTables

    tables = RuntimeTables(tmp_path / "runtime")
    try:
        limiter = RequestLimiter(tables.rate_buckets)
        for i in range(MAX_BUCKETS + 10):
            limiter.admit(f"key_{i}", SLOW, now=i)
        assert PRUNE_TO <= len(tables.rate_buckets) <= MAX_BUCKETS
        assert limiter.size == len(tables.rate_buckets)
    finally:
        tables.close()


def test_leases_of_workers_that_vanished_are_dropped_by_heartbeats():
    live = registry.Liveness(lease_ms=1_000)
    for i in range(10_000):  # each worker beats once and is never seen again
        live.beat(f"wrk_{i}", now=i * 10)
        assert live.size <= 2 * 100 + 64  # at most ~100 leases run at any moment here
    assert live.live_ids(now=9_999 * 10 + 999) == ["wrk_9999"]


def test_watch_streams_are_capped():
    changes = Changes(max_watches=2)

    with changes.watching(), changes.watching():
        assert changes.watches == 2
        with pytest.raises(BrokerError) as caught, changes.watching():
            pass
        assert (caught.value.code, caught.value.reason) == \
            (Code.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHES")
        assert caught.value.retry_after_ms
    assert changes.watches == 0
    with changes.watching():  # a slot is free again
        assert changes.watches == 1
