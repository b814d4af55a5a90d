"""Request rate limits per agent key: a token bucket in memory.

The policy of the key's wallet (or the tenant default) sets requests_per_minute and
burst (the bucket size; 0 means one minute's worth). The bucket lives in memory: a
restart refills it, which the issue allows for request rates. (Spend velocity, which
must survive restarts, is derived from the stored authorizations: policy.py.)
Owners, workers, auditors and admins are not rate limited by policy.

Integer arithmetic: tokens are counted in 1/60000ths, so a bucket gains exactly
`requests_per_minute` of those per millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store.base import Tx
from .access import Principal
from .errors import BrokerError, Code
from .policy import effective

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


class RequestLimiter:
    def __init__(self) -> None:
        # key id -> (tokens in 1/60000ths, time of the last update in ms, its rate)
        self._buckets: dict[str, tuple[int, int, RequestRate]] = {}

    def admit(self, key_id: str, rate: RequestRate | None, now: int) -> None:
        """Take one token from the key's bucket, or raise RATE_LIMITED."""
        if rate is None:
            return
        capacity = rate.burst * UNIT
        tokens, last, _ = self._buckets.get(key_id, (capacity, now, rate))
        tokens = min(capacity, tokens + max(0, now - last) * rate.per_minute)
        if tokens < UNIT:
            wait_ms = -(-(UNIT - tokens) // rate.per_minute)
            self._buckets[key_id] = (tokens, now, rate)
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
        self._buckets[key_id] = (tokens - UNIT, now, rate)
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full(now)

    def _forget_full(self, now: int) -> None:
        # A bucket that has refilled is as good as a new one: dropping it changes nothing.
        full = [key for key, (tokens, last, rate) in self._buckets.items()
                if tokens + (now - last) * rate.per_minute >= rate.burst * UNIT]
        for key in full:
            del self._buckets[key]
