"""Failed authentications per peer address: a token bucket each, in a bounded table.

A caller that keeps presenting keys that are not valid (unknown or revoked) uses up its
address's allowance (`burst` failures, refilled at `per_minute`); from then on its
failures are answered RESOURCE_EXHAUSTED / AUTH_THROTTLED with the wait in RetryInfo.
Only failures count, and only per address: a valid key authenticates whatever its
address has done (so one address cannot lock out the keys of anyone else, nor its
own valid ones), and a burst of guesses costs the guesser, not the other callers.
The table keeps at most `max_peers` addresses, dropping the least recently failing.
"""

from __future__ import annotations

from collections import OrderedDict

from common.errors import BrokerError, Code

from .rate_limits import RequestRate, _take

MAX_PEERS = 10_000


class FailedAuthThrottle:
    def __init__(self, per_minute: int = 60, burst: int = 30, max_peers: int = MAX_PEERS):
        self._rate = RequestRate(per_minute, burst)
        self._max_peers = max_peers
        # peer -> (tokens in 1/60000ths of a failure, time of the last failure in ms)
        self._buckets: OrderedDict[str, list[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def failed(self, peer: str, error: BrokerError, now: int) -> BrokerError:
        """What to answer a failed authentication from `peer` with: `error` itself while
        the address has failures left, AUTH_THROTTLED once it has used them up."""
        bucket, wait_ms = _take(self._buckets.pop(peer, None), self._rate, now)
        self._buckets[peer] = bucket  # the most recent last
        if len(self._buckets) > self._max_peers:
            self._buckets.popitem(last=False)
        if wait_ms is None:
            return error
        return BrokerError(
            Code.RESOURCE_EXHAUSTED, "AUTH_THROTTLED",
            f"too many failed authentications from this address; retry in {wait_ms} ms",
            {"failures_per_minute": str(self._rate.per_minute),
             "burst": str(self._rate.burst)}, retry_after_ms=wait_ms)
