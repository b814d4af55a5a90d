"""Request rate limits per agent key: a token bucket per key.

The policy of the key's wallet (or the tenant default) sets requests_per_minute and
burst (the bucket size; 0 means one minute's worth). The bucket lives in memory (in a
table the server processes share when `broker serve --processes N` runs several), or,
for several brokers on one PostgreSQL database, in a table of the database that all of
them share (`AtomicBuckets`: it does `_take`'s arithmetic in one statement). A restart
(of the broker, or of the database: the table is unlogged) refills it, which the issue
allows for request rates. (Spend velocity, which must survive restarts, is derived from
the stored authorizations: policy.py.)
Owners, workers, auditors and admins are not rate limited by policy.

Integer arithmetic: tokens are counted in 1/60000ths, so a bucket gains exactly
`requests_per_minute` of those per millisecond.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from common.errors import BrokerError, Code

from ..store.base import Tx
from .access import Principal
from .policy import effective

T = TypeVar("T")

UNIT = 60_000  # one request, in bucket units
# At most this many buckets are kept. Beyond it the full (idle) ones are forgotten, which
# changes nothing (a new bucket starts full), and then, only if that is not enough, the
# least recently used ones: such a key gets a fresh burst. Pruning goes down to
# PRUNE_TO, so that it runs once per MAX_BUCKETS - PRUNE_TO new keys at most.
MAX_BUCKETS = 10_000
PRUNE_TO = 9_000


@dataclass(frozen=True)
class RequestRate:
    per_minute: int
    burst: int


def request_rate(tx: Tx, principal: Principal) -> RequestRate | None:
    """The request rate that applies to the principal, if any."""
    if principal.role != "agent":
        return None
    wallet = tx.get("wallets", principal.wallet_id)
    pol, _ = effective(tx, wallet) if wallet else (None, "none")
    if not pol or not pol["rate_limits"]["requests_per_minute"]:
        return None
    limits = pol["rate_limits"]
    return RequestRate(limits["requests_per_minute"],
                       limits["burst"] or limits["requests_per_minute"])


class Buckets(Protocol):
    """key id -> [tokens in 1/60000ths, time of the last update in ms, per_minute, burst]:
    a dict, or a table the server processes of a prefork broker share."""

    def update_value(self, key: str, change: Callable[[Any], tuple[Any, T]]) -> T:
        """Atomically replace the value under `key` by change(value or None)[0]; return
        change(...)[1]."""

    def items(self) -> Iterable[tuple[str, Any]]: ...

    def pop(self, key: str, default: Any = None) -> Any: ...

    def __len__(self) -> int: ...


class AtomicBuckets(Protocol):
    """Buckets that take a request themselves, atomically (a shared database table): the
    same arithmetic as `_take`. Pruned by the sweep (`RequestLimiter.prune`)."""

    def take(self, key: str, per_minute: int, burst: int, unit: int, now: int) -> int | None:
        """One request from `key`'s bucket: None, or the ms to wait when it is empty."""

    def prune(self, now: int, unit: int) -> int:
        """Forget the buckets that have refilled; how many."""


class LocalBuckets(dict):
    """`Buckets` in this process's memory."""

    def update_value(self, key: str, change: Callable[[Any], tuple[Any, T]]) -> T:
        self[key], result = change(self.get(key))
        return result

    def pop(self, key: str, default: Any = None) -> Any:
        return super().pop(key, default)


class RequestLimiter:
    def __init__(self, buckets: Buckets | None = None, *,
                 shared: AtomicBuckets | None = None) -> None:
        """`buckets`: in memory (or the prefork processes' table); `shared`: in the
        database several brokers share (then `buckets` is unused)."""
        self._atomic = shared
        self._buckets: Buckets | None = None
        if shared is None:
            self._buckets = LocalBuckets() if buckets is None else buckets

    @property
    def size(self) -> int:
        """How many buckets this process keeps in memory (at most MAX_BUCKETS; none
        when they are in a database)."""
        return 0 if self._buckets is None else len(self._buckets)

    @property
    def remote(self) -> bool:
        """True when the buckets are in a database (`admit` is a round trip): callers
        on the event loop then admit off it."""
        return bool(getattr(self._atomic, "remote", False))

    def admit(self, key_id: str, rate: RequestRate | None, now: int) -> None:
        """Take one token from the key's bucket, or raise RATE_LIMITED."""
        if rate is None:
            return
        if self._atomic is not None:
            wait_ms = self._atomic.take(key_id, rate.per_minute, rate.burst, UNIT, now)
        else:
            assert self._buckets is not None
            wait_ms = self._buckets.update_value(key_id, lambda kept: _take(kept, rate, now))
            if len(self._buckets) > MAX_BUCKETS:
                self._prune(now)
        if wait_ms is not None:
            raise BrokerError(
                Code.RESOURCE_EXHAUSTED, "RATE_LIMITED",
                f"too many requests: this key may make {rate.per_minute} per minute "
                f"(bursts of {rate.burst}); retry in {wait_ms} ms",
                {"key_id": key_id, "requests_per_minute": str(rate.per_minute),
                 "burst": str(rate.burst)},
                retry_after_ms=wait_ms,
                quota_violations=[(f"api_key:{key_id}/requests_per_minute",
                                   f"{rate.per_minute} requests per minute, bursts of "
                                   f"{rate.burst}")])

    def prune(self, now: int) -> int:
        """The sweep's step: forget the shared buckets that have refilled (buckets in
        memory are pruned as they grow, in `admit`); how many."""
        return 0 if self._atomic is None else self._atomic.prune(now, UNIT)

    def _prune(self, now: int) -> None:
        assert self._buckets is not None
        kept = sorted(self._buckets.items(), key=lambda item: item[1][1])  # oldest first
        full = [key for key, bucket in kept if _full(bucket, now)]
        full_keys = set(full)
        rest = [key for key, _ in kept if key not in full_keys]
        for key in full + rest[:max(0, len(rest) - PRUNE_TO)]:
            self._buckets.pop(key, None)  # another process may have dropped it first


def _full(bucket: list[int], now: int) -> bool:
    """A bucket that has refilled is as good as a new one: dropping it changes nothing."""
    tokens, last, per_minute, burst = bucket
    return tokens + max(0, now - last) * per_minute >= burst * UNIT


def _take(bucket: list[int] | None, rate: RequestRate,
          now: int) -> tuple[list[int], int | None]:
    """(the bucket after one request, None) or (the bucket, ms to wait) when empty."""
    capacity = rate.burst * UNIT
    tokens, last = bucket[:2] if bucket else (capacity, now)
    tokens = min(capacity, tokens + max(0, now - last) * rate.per_minute)
    if tokens < UNIT:
        return [tokens, now, rate.per_minute, rate.burst], -(-(UNIT - tokens) // rate.per_minute)
    return [tokens - UNIT, now, rate.per_minute, rate.burst], None
