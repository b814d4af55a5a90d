"""Micro-wallet refill rules, and the wallet's blast radius.

A wallet is refilled from its owner's treasury only as part of a settlement (never
on its own): its posted balance back up to its refill target, so a refill replaces what
was charged and never backfills an open hold (wallets.refill). A policy adds:
- a daily refill cap: at most `daily_cap` per UTC day;
- a pause: after `pause_after_failures` consecutive jobs settled as STOPPED or
  HOLD_EXPIRED (stopped by the broker, or the worker vanished), refills stop until
  the owner resumes them. A job settled as FINISHED ends the streak.

The blast radius (README.md) is the most the wallet's agent keys can still make it
pay: what is already held, plus what can still be held today, which is the available
balance plus the refills still allowed today, bounded by the room under every spend
limit.
"""

from __future__ import annotations

from ..store.base import Record, Tx
from . import alerts, journal, ledger, policy, spend
from .access import Principal
from .tenancy import get_owner
from .wallets import get_wallet, refill

FINISHED = "FINISHED"


def _state(tx: Tx, wallet_id: str, now: int) -> Record:
    state = tx.get("refill_states", wallet_id) or {"day": "", "refilled": 0, "failures": 0,
                                                    "paused": False}
    today = spend.buckets(now)["day"]
    if state["day"] != today:
        state.update(day=today, refilled=0)
    return state


def _rules(tx: Tx, wallet: Record) -> Record:
    pol, _ = policy.effective(tx, wallet)
    return (pol or policy.EMPTY)["refills"]


def after_settlement(tx: Tx, wallet: Record, outcome: str, now: int) -> int:
    """Apply the refill rules after a settlement; returns the amount refilled."""
    rules = _rules(tx, wallet)
    state = _state(tx, wallet["wallet_id"], now)
    if outcome == FINISHED:
        state["failures"] = 0
    else:
        state["failures"] += 1
        pause_after = rules["pause_after_failures"]
        if pause_after and state["failures"] >= pause_after and not state["paused"]:
            state["paused"] = True
            journal.append(tx, "refills_paused", {"wallet_id": wallet["wallet_id"],
                                                  "failures": state["failures"]}, now)
            alerts.raise_alert(tx, "refills_paused", wallet["owner_id"], wallet["wallet_id"],
                               f"refills paused after {state['failures']} failed or stopped "
                               "jobs in a row", now, policy.alert_rules(tx, wallet),
                               observed=state["failures"], baseline=pause_after)
    moved = 0
    if not state["paused"]:
        cap = rules["daily_cap"]
        moved = refill(tx, wallet, now, limit=max(0, cap - state["refilled"]) if cap else None)
    state["refilled"] += moved
    tx.put("refill_states", wallet["wallet_id"], state)
    return moved


def resume(tx: Tx, principal: Principal, wallet_id: str, now: int) -> Record:
    wallet = get_wallet(tx, principal, wallet_id)
    state = _state(tx, wallet["wallet_id"], now)
    if state["paused"] or state["failures"]:
        state.update(paused=False, failures=0)
        tx.put("refill_states", wallet["wallet_id"], state)
        journal.append(tx, "refills_resumed", {"wallet_id": wallet["wallet_id"],
                                               "by": principal.key_id}, now)
    return status_of(tx, wallet, now)


def status(tx: Tx, principal: Principal, wallet_id: str, now: int) -> Record:
    return status_of(tx, get_wallet(tx, principal, wallet_id), now)


def status_of(tx: Tx, wallet: Record, now: int) -> Record:
    pol, source = policy.effective(tx, wallet)
    pol = pol or policy.EMPTY
    spent = spend.totals(tx, wallet["wallet_id"], now)
    state = _state(tx, wallet["wallet_id"], now)
    bal = ledger.balance(ledger.get_account(tx, wallet["wallet_id"]))
    return {"wallet_id": wallet["wallet_id"], "spent": spent, "refilled_today": state["refilled"],
            "failures": state["failures"], "paused": state["paused"], "source": source,
            "blast_radius_today": _blast_radius(tx, wallet, pol, spent, state, bal)}


def _blast_radius(tx: Tx, wallet: Record, pol: Record, spent: Record, state: Record,
                  bal: Record) -> int:
    """Held now + min(available + refills still possible today, room under each limit).
    A frozen wallet can hold nothing new (its running sessions are stopped, but what
    they were acknowledged before is still charged: it is within `pending`)."""
    if wallet["frozen"]:
        return bal["pending"]
    refills = 0
    if wallet["refill_target"] and not state["paused"]:
        treasury = ledger.get_account(tx, get_owner(tx, wallet["owner_id"])["treasury_account_id"])
        refills = ledger.balance(treasury)["available"]
        if pol["refills"]["daily_cap"]:
            refills = min(refills, max(0, pol["refills"]["daily_cap"] - state["refilled"]))
    new = bal["available"] + refills
    for name, period in policy.LIMIT_PERIODS.items():
        limit = pol["limits"][name]
        if limit:
            new = min(new, max(0, limit - spent[period]))
    return bal["pending"] + new
