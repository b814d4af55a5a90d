"""Request rate limits per agent key: a token bucket in memory.

The policy of the key's wallet (or the tenant default) sets requests_per_minute and
burst (the bucket size; 0 means one minute's worth). The bucket lives in memory (in a
table the server processes share when `broker serve --processes N` runs several): a
restart refills it, which the issue allows for request rates. (Spend velocity, which
must survive restarts, is derived from the stored authorizations: policy.py.)
Owners, workers, auditors and admins are not rate limited by policy.

Integer arithmetic: tokens are counted in 1/60000ths, so a bucket gains exactly
`requests_per_minute` of those per millisecond.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from common.errors import BrokerError, Code

from ..store.base import Tx
from .access import Principal
from .policy import effective

T = TypeVar("T")

UNIT = 60_000  # one request, in bucket units
MAX_BUCKETS = 10_000  # beyond this, full (idle) buckets are forgotten


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


class SharedBuckets(Protocol):
    """Buckets kept outside this process (the server processes of a prefork broker)."""

    def update_value(self, key: str, change: Callable[[Any], tuple[Any, T]]) -> T:
        """Atomically replace the value under `key` by change(value or None)[0]; return
        change(...)[1]."""


class RequestLimiter:
    def __init__(self, shared: SharedBuckets | None = None) -> None:
        # key id -> (tokens in 1/60000ths, time of the last update in ms, its rate); or
        # [tokens, time] per key in `shared`, when several processes serve one broker.
        self._buckets: dict[str, tuple[int, int, RequestRate]] = {}
        self._shared = shared

    def admit(self, key_id: str, rate: RequestRate | None, now: int) -> None:
        """Take one token from the key's bucket, or raise RATE_LIMITED."""
        if rate is None:
            return
        if self._shared is not None:
            wait_ms = self._shared.update_value(
                key_id, lambda kept: _take(None if kept is None else tuple(kept), rate, now))
        else:
            kept = self._buckets.get(key_id)
            bucket, wait_ms = _take(kept and kept[:2], rate, now)
            self._buckets[key_id] = (*bucket, rate)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_full(now)
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

    def _forget_full(self, now: int) -> None:
        # A bucket that has refilled is as good as a new one: dropping it changes nothing.
        full = [key for key, (tokens, last, rate) in self._buckets.items()
                if tokens + (now - last) * rate.per_minute >= rate.burst * UNIT]
        for key in full:
            del self._buckets[key]


def _take(bucket: tuple[int, int] | None, rate: RequestRate,
          now: int) -> tuple[tuple[int, int], int | None]:
    """(the bucket after one request, None) or (the bucket, ms to wait) when empty."""
    capacity = rate.burst * UNIT
    tokens, last = bucket or (capacity, now)
    tokens = min(capacity, tokens + max(0, now - last) * rate.per_minute)
    if tokens < UNIT:
        return (tokens, now), -(-(UNIT - tokens) // rate.per_minute)
    return (tokens - UNIT, now), None
