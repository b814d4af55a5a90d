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


class LocalBuckets(dict):
    """`Buckets` in this process's memory."""

    def update_value(self, key: str, change: Callable[[Any], tuple[Any, T]]) -> T:
        self[key], result = change(self.get(key))
        return result

    def pop(self, key: str, default: Any = None) -> Any:
        return super().pop(key, default)


class RequestLimiter:
    def __init__(self, buckets: Buckets | None = None) -> None:
        self._buckets: Buckets = LocalBuckets() if buckets is None else buckets

    @property
    def size(self) -> int:
        """How many buckets are kept now (at most MAX_BUCKETS)."""
        return len(self._buckets)

    def admit(self, key_id: str, rate: RequestRate | None, now: int) -> None:
        """Take one token from the key's bucket, or raise RATE_LIMITED."""
        if rate is None:
            return
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

    def _prune(self, now: int) -> None:
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
