"""Kill switch: freezing a wallet or revoking the agent key that authorized a session
stops the session.

New authorizations are refused at once elsewhere (a frozen wallet fails
`require_spendable`, a revoked key fails authentication). Here, running sessions: the
worker reports usage at least once per reporting interval, and the answer to the first
report after the freeze or revocation is STOP (reason "revoked"), so the worker stops
within one interval. A voucher redeemed after the freeze opens its session already
stopped. The worker then finishes as after any STOP; if it has not finished two
intervals later, `overdue` hands the session to the sweep, which settles it on the
last acknowledged usage.
"""

from __future__ import annotations

import dataclasses

from ..store.base import Record, Tx, due, must_get
from . import budgets
from .session import UsageDecision

REVOKED = "revoked"  # a session stop reason, beside session.BUDGET_EXHAUSTED and HOLD_EXPIRING
GRACE_INTERVALS = 2


def revoked(tx: Tx, auth: Record) -> bool:
    """Is the authorization's wallet (or a level above it) frozen or revoked, or the agent
    key that made it revoked?"""
    if must_get(tx, "wallets", auth["wallet_id"])["frozen"]:
        return True
    if budgets.stopped_by(tx, auth["wallet_id"]) is not None:
        return True  # a revoked sub-budget, or a frozen wallet above it
    key = tx.get("api_keys", auth["key_id"]) if auth.get("key_id") else None
    return bool(key and key["revoked"])


def _stop(tx: Tx, ses: Record, now: int) -> Record:
    deadline = now + GRACE_INTERVALS * ses["report_interval_ms"]
    tx.put("stop_deadlines", f"{deadline:020d}/{ses['session_id']}", {})
    return {**ses, "stop_reason": REVOKED}


def on_redeem(tx: Tx, ses: Record, auth: Record, now: int) -> Record:
    """The new session, stopped from the start when the kill switch is on."""
    return _stop(tx, ses, now) if revoked(tx, auth) else ses


def on_usage(tx: Tx, current: Record, decision: UsageDecision, now: int) -> UsageDecision:
    """Turn an acknowledged report into a STOP when the kill switch is on."""
    if decision.session is current or decision.stop_reason == REVOKED:
        return decision  # a retransmission: the first answer stands
    if not revoked(tx, must_get(tx, "authorizations", current["authorization_id"])):
        return decision
    return dataclasses.replace(decision, session=_stop(tx, decision.session, now),
                               stop_reason=REVOKED)


def overdue(tx: Tx, now: int, limit: int = 200) -> list[tuple[str, Record]]:
    """(deadline key, session) of stopped sessions whose worker did not finish in time;
    the caller settles those still open and deletes the keys."""
    rows = due(tx, "stop_deadlines", f"{now + 1:020d}", limit)
    return [(key, must_get(tx, "sessions", key.split("/", 1)[1])) for key, _ in rows]
