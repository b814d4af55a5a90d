"""Figures for monitoring, read from the ledger: a Tx in, numbers out.

Gauges (what is true now) come from the index of pending holds. Counters come from
the journal: every entry is a committed state change, so nothing is ever counted for
an operation that was rolled back, and every path that settles (a worker finishing,
a hold expiring) is counted the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..store.base import Tx, must_get
from .authorizations import REDEEMED


@dataclass(frozen=True)
class Holds:
    pending: int  # holds not yet resolved
    amount: int  # micro-credits they hold
    open_sessions: int  # of those, redeemed: a metering session is open


def holds(tx: Tx) -> Holds:
    pending = amount = sessions = 0
    for key, _ in tx.scan("hold_expiry"):
        transfer = must_get(tx, "transfers", key.split("/", 1)[1])
        pending += 1
        amount += transfer["amount"]
        authorization_id = transfer.get("user_data", {}).get("authorization_id")
        auth = tx.get("authorizations", authorization_id) if authorization_id else None
        if auth is not None and auth["state"] == REDEEMED:
            sessions += 1
    return Holds(pending, amount, sessions)


def journal_head(tx: Tx) -> int:
    head = tx.get("meta", "journal_head")
    return head["seq"] if head else 0


@dataclass
class Tally:
    """Running totals over the journal entries after `seq`."""

    seq: int
    events: Counter = field(default_factory=Counter)  # entry kind -> count
    settlements: Counter = field(default_factory=Counter)  # outcome -> count
    charged: int = 0  # settled charges: what agents spent
    payouts: int = 0  # of which workers got
    fees: int = 0  # of which the platform kept
    authorized: int = 0  # amounts put on hold by authorizations

    def catch_up(self, tx: Tx, limit: int = 10_000) -> int:
        """Count up to `limit` entries after `seq`; how many were read."""
        read = 0
        for _, entry in tx.scan("journal", start=f"{self.seq + 1:020d}", limit=limit):
            self.add(entry)
            read += 1
        return read

    def add(self, entry: dict) -> None:
        self.seq = entry["seq"]
        kind, data = entry["kind"], entry["data"]
        self.events[kind] += 1
        if kind == "session_settled":
            self.settlements[data["outcome"]] += 1
            self.charged += data["charged"]
            self.payouts += data["payout"]
            self.fees += data["fee"]
        elif kind == "authorized":
            self.authorized += data["amount"]
