"""Subscription credits inside a wallet: the grant sub-ledger.

A grant is credit that an owner's plan put into a wallet for one period. The credits
sit in the wallet's ledger account (posted), next to purchased funds; this module
keeps track of which part is which and in what order it is spent:

- a hold on the wallet reserves grant credits first, in burn order (earliest expiry
  first, then higher priority, then the older grant); the rest of the hold is
  purchased funds;
- when the hold resolves, the posted part burns its reserved credits in that order
  and the rest of the reservation is freed;
- an expiring grant (subscriptions.expire_due) returns its unreserved remainder to
  the issuer at once; a part reserved by a pending hold goes back when that hold
  resolves (the hold was placed while the credits were valid, so it may spend them).

The ledger calls `on_hold` and `on_resolve` for accounts with grant credits. The
account record keeps `grant_credits` (credits not yet spent or returned) and
`grant_reserved`; its `max_balance` (the wallet's cap) is raised by grant_credits, so
credits never count against the cap, which limits purchased funds.

This module does no transfers itself (the ledger imports it): it says what to return.
"""

from __future__ import annotations

from ..store.base import Record, Tx, must_get
from . import journal

ACTIVE, EXPIRED = "active", "expired"
MAX_PRIORITY = 1000


def order_key(grant: Record) -> str:
    """Burn order as a key: earliest expiry, then higher priority, then older grant."""
    return (f"{grant['wallet_id']}/{grant['expire_ms']:020d}/"
            f"{MAX_PRIORITY - grant['priority']:04d}/{grant['grant_id']}")


def change_credits(account: Record, delta: int) -> None:
    """Credits enter (+) or leave (-) the account: keep the cap for purchased funds."""
    account["grant_credits"] = account.get("grant_credits", 0) + delta
    if account["max_balance"]:
        account["max_balance"] += delta


def has_credits(account: Record) -> bool:
    return bool(account.get("grant_credits"))


def on_hold(tx: Tx, account: Record, hold_id: str, amount: int) -> None:
    """Reserve grant credits for a new hold of `amount` on `account` (written here),
    in burn order.
    Grants past their expiry that the sweep has not reached yet still count: the
    sweep returns what is left of them, so a hold must not take their funds as
    purchased ones."""
    parts, left = [], amount
    for key, _ in tx.scan("grant_order", prefix=f"{account['account_id']}/"):
        if not left:
            break
        grant = must_get(tx, "grants", key.rsplit("/", 1)[1])
        take = min(grant["remaining"] - grant["reserved"], left)
        if take <= 0:
            continue
        grant["reserved"] += take
        tx.put("grants", grant["grant_id"], grant)
        parts.append([grant["grant_id"], take])
        left -= take
    if parts:
        reserved = amount - left
        account["grant_reserved"] = account.get("grant_reserved", 0) + reserved
        tx.put("accounts", account["account_id"], account)
        tx.put("grant_holds", hold_id, {"account_id": account["account_id"], "parts": parts})


def on_resolve(tx: Tx, account: Record, hold_id: str, posted: int,
               now: int) -> list[tuple[str, int]]:
    """A hold on `account` resolved with `posted` spent: burn its reserved credits in
    order, free the rest. Updates `account` (the caller writes it). Returns the
    (issuer account, amount) transfers that give freed credits of expired grants back."""
    reservation = tx.get("grant_holds", hold_id)
    if reservation is None:
        return []
    tx.delete("grant_holds", hold_id)
    returns, left, gone = [], posted, 0
    for grant_id, part in reservation["parts"]:
        grant = must_get(tx, "grants", grant_id)
        burned = min(left, part)
        left -= burned
        grant["reserved"] -= part
        grant["remaining"] -= burned
        grant["spent"] += burned
        account["grant_reserved"] -= part
        gone += burned
        freed = part - burned
        if grant["state"] == EXPIRED and freed:
            grant["remaining"] -= freed
            grant["returned"] += freed
            gone += freed
            returns.append((grant["issuer_account_id"], freed))
            journal.append(tx, "grant_credits_returned",
                           {"grant_id": grant_id, "amount": freed, "hold_id": hold_id}, now)
        tx.put("grants", grant_id, grant)
    change_credits(account, -gone)
    return returns


def check(tx: Tx) -> list[str]:
    """INV-11 (grants): each grant adds up, accounts agree with their grants, and
    every reservation belongs to a pending hold and matches the grants' reserved."""
    problems: list[str] = []
    credits: dict[str, int] = {}
    reserved: dict[str, int] = {}
    for grant_id, g in tx.scan("grants"):
        if g["amount"] != g["remaining"] + g["spent"] + g["returned"]:
            problems.append(f"grant {grant_id}: amount != remaining + spent + returned")
        if not 0 <= g["reserved"] <= g["remaining"]:
            problems.append(f"grant {grant_id}: reserved outside 0..remaining")
        credits[g["wallet_id"]] = credits.get(g["wallet_id"], 0) + g["remaining"]
        reserved[g["grant_id"]] = g["reserved"]
    by_parts: dict[str, int] = {}
    for hold_id, reservation in tx.scan("grant_holds"):
        state = tx.get("hold_states", hold_id)
        if state is None or state["state"] != "pending":
            problems.append(f"grant reservation of hold {hold_id}, which is not pending")
        for grant_id, part in reservation["parts"]:
            by_parts[grant_id] = by_parts.get(grant_id, 0) + part
    for grant_id, amount in reserved.items():
        if amount != by_parts.get(grant_id, 0):
            problems.append(f"grant {grant_id}: reserved {amount}, holds reserve "
                            f"{by_parts.get(grant_id, 0)}")
    for account_id, total in credits.items():
        account = tx.get("accounts", account_id)
        if account is None or account.get("grant_credits", 0) != total:
            problems.append(f"account {account_id}: grant_credits disagree with its grants")
    return problems
