"""Spend counters: what a wallet has spent per UTC calendar period, and what one agent
key authorized in the last minute.

Spend in a period counts every authorization made in it: its amount while it is held
(or waits for approval), its charge once settled, nothing once cancelled, expired or
denied. So a counter goes up by the amount when an authorization is made and down by
whatever is released later, always in the buckets of the authorization's own creation
time. Counting holds, not only posted charges, is what makes a limit a limit: an agent
cannot hold more than the limit and spend it later.

Periods: the UTC day, the ISO week (Monday to Sunday, UTC), the UTC month, all time.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from ..store.base import Record, Tx, must_get

PERIODS = ("day", "week", "month", "all_time")
DAY_MS = 86_400_000
VELOCITY_WINDOW_MS = 60_000


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def buckets(ms: int) -> dict[str, str]:
    """The bucket of each period that the time `ms` falls in."""
    return dict(_buckets_of_day(ms // DAY_MS))


@functools.lru_cache(maxsize=64)
def _buckets_of_day(day: int) -> tuple[tuple[str, str], ...]:
    # Every period's bucket is fixed for a whole UTC day (Unix time has no leap
    # seconds), and every authorization needs them: worked out once per day.
    t = _utc(day * DAY_MS)
    year, week, _ = t.isocalendar()
    return (("day", t.strftime("%Y-%m-%d")), ("week", f"{year}-W{week:02d}"),
            ("month", t.strftime("%Y-%m")), ("all_time", "all"))


def period_end_ms(period: str, ms: int) -> int | None:
    """When the period containing `ms` ends (None for all time)."""
    t = _utc(ms)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        end = day + timedelta(days=1)
    elif period == "week":
        end = day + timedelta(days=7 - t.weekday())
    elif period == "month":
        end = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    else:
        return None
    return int(end.timestamp() * 1000)


def _key(wallet_id: str, period: str, bucket: str) -> str:
    return f"{wallet_id}/{period}/{bucket}"


def add(tx: Tx, wallet_id: str, create_ms: int, amount: int) -> None:
    """Count `amount` (negative: release) in every period of `create_ms`."""
    if not amount:
        return
    for period, bucket in buckets(create_ms).items():
        key = _key(wallet_id, period, bucket)
        row = tx.get("spend_totals", key) or {"amount": 0}
        row["amount"] += amount
        tx.put("spend_totals", key, row)


def count(tx: Tx, auth: Record) -> None:
    """A new authorization (held or waiting for approval) counts in full."""
    add(tx, auth["wallet_id"], auth["create_ms"], auth["amount"])
    _use_mandate(tx, auth, auth["amount"])


def release(tx: Tx, auth: Record, amount: int) -> None:
    """Part (settlement) or all (cancel, expiry, denial) of an authorization no longer
    counts."""
    add(tx, auth["wallet_id"], auth["create_ms"], -amount)
    _use_mandate(tx, auth, -amount)


def _use_mandate(tx: Tx, auth: Record, amount: int) -> None:
    """A mandate's total counts as a spend limit does: what its authorizations hold and
    were charged (mandates.py)."""
    if amount and auth.get("mandate_hash"):
        row = must_get(tx, "mandates", auth["mandate_hash"])
        row["used"] += amount
        tx.put("mandates", auth["mandate_hash"], row)


def totals(tx: Tx, wallet_id: str, now: int) -> dict[str, int]:
    """Spend counted in each period containing `now`."""
    out = {}
    for period, bucket in buckets(now).items():
        row = tx.get("spend_totals", _key(wallet_id, period, bucket))
        out[period] = row["amount"] if row else 0
    return out


def contribution(auth: Record) -> int:
    """What one authorization counts for now (the audit recomputes counters with it)."""
    if auth["state"] in ("held", "redeemed", "pending_approval"):
        return auth["amount"]
    if auth["state"] == "settled":
        return auth["charged"]
    return 0


def recent_by_key(tx: Tx, wallet_id: str, key_id: str, now: int) -> list[tuple[int, int]]:
    """(create_ms, amount) of the authorizations this agent key made on this wallet in
    the last minute, oldest first. Read from the stored authorizations, so the spend
    velocity survives restarts."""
    since = now - VELOCITY_WINDOW_MS
    found = []
    for _, row in tx.scan("wallet_authorizations", prefix=f"{wallet_id}/", reverse=True):
        auth = must_get(tx, "authorizations", row["authorization_id"])
        if auth["create_ms"] <= since:
            break
        if auth.get("key_id") == key_id:
            found.append((auth["create_ms"], auth["amount"]))
    return found[::-1]
