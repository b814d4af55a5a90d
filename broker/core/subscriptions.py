"""Subscription credits: plans, subscriptions, and the grant of each period exactly once.

An owner's plan grants `credits_per_period` to every subscribed wallet at the start of
each period, from the owner's treasury (the issuer). Period n of a subscription starts
at start_ms + n * period_ms; its grant expires `rollover_periods` periods after the
period ends. The subscription record says which period is next, and granting it
advances that in the same atomic operation, so each period is granted exactly once:
also when the broker was down at the boundary (the sweep at start-up and every half
second grants every period that has started, each with its own expiry; a period that
already ended is granted and then expired by the same sweep, returned to the issuer).

A short treasury grants what it has (possibly nothing); the grant records how much.
Spending order and the return of expired credits are in grants.py.
"""

from __future__ import annotations

import secrets

from common.errors import BrokerError, Code, invalid, not_found, precondition
from common.money import check_amount

from ..store.base import Record, Tx, due, must_get
from . import grants, journal, ledger, pages, validate
from .access import Principal
from .tenancy import get_owner
from .wallets import get_wallet

MAX_PERIOD_S = 366 * 86_400
MAX_ROLLOVER = 120
ACTIVE, CANCELLED = "active", "cancelled"
# Most periods one subscription catches up on in one sweep operation (the sweep repeats).
CATCH_UP_BATCH = 100


def create_plan(tx: Tx, owner_id: str, display_name: str, credits_per_period: int,
                period_seconds: int, rollover_periods: int, priority: int, now: int) -> Record:
    validate.name(display_name, "display_name")
    check_amount(credits_per_period, "credits_per_period")
    if not 0 < period_seconds <= MAX_PERIOD_S:
        raise invalid("period_seconds", f"must be between 1 and {MAX_PERIOD_S}",
                      "INVALID_PERIOD")
    if not 0 <= rollover_periods <= MAX_ROLLOVER:
        raise invalid("rollover_periods", f"must be between 0 and {MAX_ROLLOVER}",
                      "INVALID_PERIOD")
    if not 0 <= priority <= grants.MAX_PRIORITY:
        raise invalid("priority", f"must be between 0 and {grants.MAX_PRIORITY}")
    get_owner(tx, owner_id)
    seq = ledger.next_seq(tx, "plan_seq")
    plan = {"plan_id": "pln_" + secrets.token_hex(8), "owner_id": owner_id,
            "display_name": display_name, "credits_per_period": credits_per_period,
            "period_ms": period_seconds * 1000, "rollover_periods": rollover_periods,
            "priority": priority, "create_ms": now}
    tx.put("plans", str(plan["plan_id"]), plan)
    tx.put("owner_plans", f"{owner_id}/{seq:020d}", {"plan_id": plan["plan_id"]})
    journal.append(tx, "plan_created", {k: plan[k] for k in (
        "plan_id", "owner_id", "credits_per_period", "period_ms", "rollover_periods",
        "priority")}, now)
    return plan


def get_plan(tx: Tx, owner_id: str, plan_id: str) -> Record:
    plan = tx.get("plans", validate.ident(plan_id, "plan_id"))
    if plan is None or plan["owner_id"] != owner_id:
        raise not_found("plan", plan_id)
    return plan


def list_plans(tx: Tx, owner_id: str, page_size: int, page_token: str) -> Record:
    plans, token = pages.index_page(tx, "owner_plans", f"{owner_id}/", "plans", "plan_id",
                                    page_size, page_token)
    return {"plans": plans, "next_page_token": token}


def list_subscriptions(tx: Tx, owner_id: str, page_size: int, page_token: str) -> Record:
    subs, token = pages.index_page(tx, "owner_subscriptions", f"{owner_id}/",
                                   "subscriptions", "subscription_id", page_size, page_token)
    return {"subscriptions": subs, "next_page_token": token}


def _due_key(sub: Record) -> str:
    return f"{sub['next_ms']:020d}/{sub['subscription_id']}"


def subscribe(tx: Tx, owner_id: str, plan_id: str, wallet_id: str, now: int) -> Record:
    plan = get_plan(tx, owner_id, plan_id)
    wallet = tx.get("wallets", validate.ident(wallet_id, "wallet_id"))
    if wallet is None or wallet["owner_id"] != owner_id:
        raise not_found("wallet", wallet_id)
    existing = tx.get("wallet_plans", f"{wallet_id}/{plan_id}")
    if existing is not None:
        raise BrokerError(Code.ALREADY_EXISTS, "SUBSCRIPTION_EXISTS",
                          f"wallet {wallet_id} is already subscribed to plan {plan_id}",
                          {"subscription_id": existing["subscription_id"]})
    seq = ledger.next_seq(tx, "subscription_seq")
    sub = {"subscription_id": "sub_" + secrets.token_hex(8), "plan_id": plan_id,
           "wallet_id": wallet_id, "owner_id": owner_id, "state": ACTIVE, "start_ms": now,
           "next_period": 0, "next_ms": now, "create_ms": now}
    tx.put("owner_subscriptions", f"{owner_id}/{seq:020d}",
           {"subscription_id": sub["subscription_id"]})
    tx.put("wallet_plans", f"{wallet_id}/{plan_id}", {"subscription_id": sub["subscription_id"]})
    journal.append(tx, "subscribed", {"subscription_id": sub["subscription_id"],
                                      "plan_id": plan_id, "wallet_id": wallet_id}, now)
    return _grant_started(tx, sub, plan, now)


def cancel(tx: Tx, owner_id: str, subscription_id: str, now: int) -> Record:
    sub = tx.get("subscriptions", validate.ident(subscription_id, "subscription_id"))
    if sub is None or sub["owner_id"] != owner_id:
        raise not_found("subscription", subscription_id)
    if sub["state"] != ACTIVE:
        raise precondition("SUBSCRIPTION_CANCELLED", "the subscription is already cancelled",
                           subscription_id=subscription_id)
    tx.delete("subscription_due", _due_key(sub))
    tx.delete("wallet_plans", f"{sub['wallet_id']}/{sub['plan_id']}")
    sub["state"] = CANCELLED
    tx.put("subscriptions", subscription_id, sub)
    journal.append(tx, "subscription_cancelled", {"subscription_id": subscription_id}, now)
    return sub


def _grant_started(tx: Tx, sub: Record, plan: Record, now: int,
                   limit: int = CATCH_UP_BATCH) -> Record:
    """Grant every period of `sub` that has started by `now` (at most `limit`), each
    exactly once: the grants and the advanced period commit together."""
    tx.delete("subscription_due", _due_key(sub))
    for _ in range(limit):
        if sub["next_ms"] > now:
            break
        _grant(tx, sub, plan, sub["next_period"], now)
        sub["next_period"] += 1
        sub["next_ms"] = sub["start_ms"] + sub["next_period"] * plan["period_ms"]
    tx.put("subscriptions", sub["subscription_id"], sub)
    tx.put("subscription_due", _due_key(sub), {})
    return sub


def _grant(tx: Tx, sub: Record, plan: Record, period: int, now: int) -> Record:
    start = sub["start_ms"] + period * plan["period_ms"]
    issuer = get_owner(tx, plan["owner_id"])["treasury_account_id"]
    amount = max(0, min(plan["credits_per_period"],
                        ledger.balance(ledger.get_account(tx, issuer))["available"]))
    grant = {"grant_id": "grt_" + secrets.token_hex(8),
             "subscription_id": sub["subscription_id"], "plan_id": plan["plan_id"],
             "wallet_id": sub["wallet_id"], "issuer_account_id": issuer, "period": period,
             "requested": plan["credits_per_period"], "amount": amount, "remaining": amount,
             "reserved": 0, "spent": 0, "returned": 0, "priority": plan["priority"],
             "start_ms": start,
             "expire_ms": start + (1 + plan["rollover_periods"]) * plan["period_ms"],
             "state": grants.ACTIVE if amount else grants.EXPIRED, "create_ms": now}
    if amount:
        account = ledger.get_account(tx, sub["wallet_id"])
        grants.change_credits(account, amount)  # before the transfer: it checks the cap
        tx.put("accounts", account["account_id"], account)
        ledger.transfer(tx, issuer, sub["wallet_id"], amount, "subscription_grant", now,
                        {"grant_id": grant["grant_id"]})
        tx.put("grant_order", grants.order_key(grant), {})
        tx.put("grant_expiry", f"{grant['expire_ms']:020d}/{grant['grant_id']}", {})
    tx.put("grants", grant["grant_id"], grant)
    seq = ledger.next_seq(tx, "grant_seq")
    tx.put("wallet_grants", f"{sub['wallet_id']}/{seq:020d}", {"grant_id": grant["grant_id"]})
    journal.append(tx, "credits_granted", {
        "grant_id": grant["grant_id"], "subscription_id": sub["subscription_id"],
        "period": period, "requested": plan["credits_per_period"], "amount": amount,
        "expire_ms": grant["expire_ms"]}, now)
    return grant


def grant_due(tx: Tx, now: int, limit: int = 200) -> int:
    """Grant every started period of every active subscription; returns how many
    subscriptions had periods due (0 when nothing is left to do)."""
    rows = due(tx, "subscription_due", f"{now + 1:020d}", limit)
    for key, _ in rows:
        sub = must_get(tx, "subscriptions", key.split("/", 1)[1])
        plan = must_get(tx, "plans", sub["plan_id"])
        _grant_started(tx, sub, plan, now)
    return len(rows)


def expire_due(tx: Tx, now: int, limit: int = 500) -> int:
    """Expire the grants whose time has come: what is neither spent nor reserved goes
    back to the issuer now (a reserved part when its hold resolves)."""
    rows = due(tx, "grant_expiry", f"{now + 1:020d}", limit)
    for key, _ in rows:
        grant = must_get(tx, "grants", key.split("/", 1)[1])
        tx.delete("grant_expiry", key)
        tx.delete("grant_order", grants.order_key(grant))
        back = grant["remaining"] - grant["reserved"]
        if back:
            ledger.transfer(tx, grant["wallet_id"], grant["issuer_account_id"], back,
                            "grant_expiry", now, {"grant_id": grant["grant_id"]})
            account = ledger.get_account(tx, grant["wallet_id"])
            grants.change_credits(account, -back)
            tx.put("accounts", account["account_id"], account)
        grant.update(state=grants.EXPIRED, remaining=grant["remaining"] - back,
                     returned=grant["returned"] + back)
        tx.put("grants", grant["grant_id"], grant)
        journal.append(tx, "credits_expired", {"grant_id": grant["grant_id"],
                                               "returned": back}, now)
    return len(rows)


def list_grants(tx: Tx, principal: Principal, wallet_id: str, page_size: int,
                page_token: str) -> Record:
    wallet = get_wallet(tx, principal, wallet_id)
    found, token = pages.index_page(tx, "wallet_grants", f"{wallet['wallet_id']}/", "grants",
                                    "grant_id", page_size, page_token, newest_first=True)
    account = ledger.get_account(tx, wallet["wallet_id"])
    return {"grants": found, "next_page_token": token, "balance": ledger.balance(account),
            "reserved_credits": account.get("grant_reserved", 0)}
