"""Redeeming vouchers narrowed offline (common/narrowing.py): single use across a family.

A family is an original voucher and every voucher derived from it. At redemption the
broker enforces that each voucher of the family is redeemed at most once, and that the
amounts redeemed under any voucher of the family (itself and everything derived from
it) never exceed its amount, so those redeemed from the original never exceed its hold.

A derived voucher is redeemed by carving its amount out of the original
authorization's hold in one operation: the hold is voided and held again as two holds,
the derived voucher's own (on a new authorization, which is settled and receipted like
any other) and what is left for the original. The ledger never sees more held than
before, and every level of a sub-budget is counted as before (holds.py).
"""

from __future__ import annotations

import secrets

from common import vouchers
from common.errors import BrokerError, Code

from ..store.base import Record, Tx, must_get
from . import holds, journal, ledger
from .authorizations import HELD, REDEEMED, SETTLED


def _exhausted(voucher_id: str, amount: int, left: int) -> BrokerError:
    return BrokerError(
        Code.FAILED_PRECONDITION, "VOUCHER_FAMILY_EXHAUSTED",
        f"the voucher's family has {max(left, 0)} left under {voucher_id}, {amount} needed",
        {"voucher_id": voucher_id, "available": str(max(left, 0)), "requested": str(amount)},
        quota_violations=[(f"voucher:{voucher_id}", f"{amount} requested, {left} left")])


def lookup(tx: Tx, claims: vouchers.VoucherClaims) -> tuple[str, Record | None, Record | None]:
    """(key in `vouchers`, its record or None if never issued, the original
    authorization). A derived voucher has no record until it is redeemed."""
    original = tx.get("vouchers", claims.family_id)
    if original is None:
        return claims.family_id, None, None
    auth = must_get(tx, "authorizations", original["authorization_id"])
    if len(claims.chain) == 1:
        return claims.family_id, original, auth
    key = f"{claims.family_id}/{claims.voucher_id}"
    derived = tx.get("vouchers", key) or {"voucher_id": key, "authorization_id": "",
                                          "session_id": "", "redeem_ms": 0}
    if not derived["session_id"] and auth["state"] in (REDEEMED, SETTLED):
        raise BrokerError(Code.FAILED_PRECONDITION, "VOUCHER_ALREADY_REDEEMED",
                          "the original voucher was redeemed: its family is spent",
                          {"voucher_id": claims.voucher_id})
    return key, derived, auth


def check_room(tx: Tx, auth: Record, claims: vouchers.VoucherClaims) -> None:
    """Raise unless the voucher fits its family: the original's hold has its amount
    left, and so has every voucher above it in the chain."""
    if len(claims.chain) == 1:
        if claims.amount and not auth["amount"]:  # all carved (a lease job holds nothing)
            raise _exhausted(claims.voucher_id, claims.amount, 0)
        return
    carved = (tx.get("voucher_families", claims.family_id) or {"carved": {}})["carved"]
    for voucher_id, amount in claims.chain:
        left = amount - carved.get(voucher_id, 0)
        if claims.amount > left:
            raise _exhausted(voucher_id, claims.amount, left)
    if claims.amount > auth["amount"]:
        raise _exhausted(claims.family_id, claims.amount, auth["amount"])


def carve(tx: Tx, auth: Record, claims: vouchers.VoucherClaims, voucher_key: str,
          now: int) -> Record:
    """The derived voucher's own authorization, its amount carved out of `auth`'s hold
    (after `check_room`)."""
    assert auth["state"] == HELD and len(claims.chain) > 1
    amount, left = claims.amount, auth["amount"] - claims.amount
    user_data = {"authorization_id": auth["authorization_id"]}
    ledger.resolve(tx, auth["hold_id"], ledger.VOID_PENDING, now)
    remainder = holds.wallet_hold(tx, auth["wallet_id"], left, "hold", now,
                                  auth["expire_ms"], user_data) if left else None
    auth.update(amount=left, hold_id=remainder["transfer_id"] if remainder else "")
    tx.put("authorizations", auth["authorization_id"], auth)
    child_id = "auth_" + secrets.token_hex(12)
    expire_ms = min(claims.expire_ms, auth["expire_ms"])
    held = holds.wallet_hold(tx, auth["wallet_id"], amount, "hold", now, expire_ms,
                             {"authorization_id": child_id})
    seq = ledger.next_seq(tx, "authorization_seq")
    # Counted in the spend of the original's creation time: the original's amount went
    # down by as much (spend.py).
    child = {**auth, "authorization_id": child_id, "amount": amount, "scope": claims.scope,
             "hold_id": held["transfer_id"], "voucher_id": voucher_key, "expire_ms": expire_ms,
             "seq": seq, "derived_from": auth["authorization_id"]}
    tx.put("authorizations", child_id, child)
    tx.put("wallet_authorizations", f"{auth['wallet_id']}/{seq:020d}",
           {"authorization_id": child_id})
    family = tx.get("voucher_families", claims.family_id) or {"carved": {}}
    for voucher_id, _ in claims.chain[:-1]:
        family["carved"][voucher_id] = family["carved"].get(voucher_id, 0) + amount
    tx.put("voucher_families", claims.family_id, family)
    journal.append(tx, "voucher_family_carved", {
        "authorization_id": child_id, "from_authorization_id": auth["authorization_id"],
        "amount": amount, "hold_id": held["transfer_id"]}, now)
    return child
