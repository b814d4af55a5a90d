"""Settings the money rules depend on. Adapters fill it from flags and files."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CoreConfig:
    # Platform fee in basis points of each charge (floor; the worker gets the rest).
    fee_bps: int = 250
    # How often workers report usage; STOP is decided one interval ahead.
    report_interval_ms: int = 1000
    # Authorization time to live when the request leaves it at 0, and its maximum.
    default_ttl_ms: int = 600_000
    max_ttl_ms: int = 86_400_000
    # A worker drops out of the offers this long after its last heartbeat.
    worker_lease_ms: int = 15_000
    # Largest cap a single wallet may have.
    max_wallet_cap: int = 10**15
    # Receipts record only the hour (or day) they settled in; statements are never finer.
    receipt_period_ms: int = 3_600_000
