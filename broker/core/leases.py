"""Reserved capacity: an agent leases a whole worker for a time at its reserved rate.

Terms (from the worker's price sheet, or locked by a quote): reserved_hour_price and
unused_reserved_bps. Creating a lease places one hold on the agent's wallet for the
whole lease at the full rate, ceil(lease_ms * reserved_hour_price / 3_600_000).

While the lease is active the worker redeems only the lease's vouchers
(AuthorizeLeaseJob): each is an authorization with no hold of its own (amount 0),
pinned to the worker, expiring with the lease, whose session is priced at zero. The
jobs' metered GPU time is the lease's used time. At the lease's end (or EndLease)
lease_settlement.py charges money.lease_charge: used time at the reserved rate, unused
time at unused_reserved_bps of it; the rest of the hold is released.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection

from common.errors import BrokerError, Code, invalid, not_found, precondition
from common.money import MAX_BPS, PRICE_FIELDS, check_amount, lease_charge

from ..store.base import Record, Tx, must_get
from . import budgets, journal, ledger, mandates, pages, policy, quotes, spend, validate
from .access import Principal, can_see_wallet_record
from .authorizations import HELD, REDEEMED
from .registry import inactive
from .wallets import get_wallet, require_spendable

ACTIVE, SETTLED = "active", "settled"
MAX_LEASE_S = 7 * 86_400
# The hold outlives the lease, which settles it at its end (lease_settlement.settle_due);
# the margin keeps the generic hold expiry from ever reaching it first.
HOLD_MARGIN_MS = 86_400_000
ZERO_PRICES = dict.fromkeys(PRICE_FIELDS, 0)


def active_lease(tx: Tx, worker_id: str, now: int) -> Record | None:
    """The lease a worker is under now, if any (one past its end no longer counts,
    even before the sweep settles it)."""
    row = tx.get("worker_leases", worker_id)
    if row is None:
        return None
    lease = must_get(tx, "leases", row["lease_id"])
    return lease if now < lease["end_ms"] else None


def leased_worker_ids(tx: Tx, now: int) -> set[str]:
    return {key for key, row in tx.scan("worker_leases")
            if now < must_get(tx, "leases", row["lease_id"])["end_ms"]}


def create(tx: Tx, principal: Principal, worker_id: str, duration_seconds: int, quote_id: str,
           live_ids: Collection[str], now: int) -> Record:
    wallet = get_wallet(tx, principal, "")
    require_spendable(wallet)
    if budgets.get(tx, wallet["wallet_id"]) is not None:  # (a lease pins the root's money)
        raise precondition("SUB_BUDGET_LEASE_NOT_ALLOWED", "a sub-budget cannot lease a "
                           "worker; authorize jobs instead", wallet=wallet["wallet_id"])
    if mandates.required(tx, wallet):
        raise BrokerError(Code.PERMISSION_DENIED, "MANDATE_REQUIRED", "the wallet's spend "
                          "policy requires a mandate for every authorization, and a lease "
                          "cannot carry one", {"wallet": wallet["wallet_id"]})
    if not 0 < duration_seconds <= MAX_LEASE_S:
        raise invalid("duration_seconds", f"must be between 1 and {MAX_LEASE_S}")
    worker = tx.get("workers", validate.ident(worker_id, "worker_id"))
    if worker is None:
        raise not_found("worker", worker_id)
    if not worker["active"]:
        raise inactive(worker_id)
    if worker_id not in live_ids:
        raise precondition("WORKER_NOT_LIVE", "the worker sends no heartbeats; lease a live "
                           "one", worker_id=worker_id)
    terms = worker["prices"]
    if quote_id:
        quote = quotes.get(tx, principal, quote_id)
        if now >= quote["expire_ms"]:
            raise precondition("QUOTE_EXPIRED", "the quote's prices are no longer locked",
                               quote_id=quote_id)
        offered = [o["prices"] for o in quote["offers"] if o["worker_id"] == worker_id]
        if not offered:
            raise invalid("worker_id", "is not among the quote's offers", "OFFER_NOT_IN_QUOTE")
        terms = offered[0]
    rate, unused_bps = terms.get("reserved_hour_price", 0), terms.get("unused_reserved_bps", 0)
    if not rate:
        raise precondition("LEASE_NOT_OFFERED", "the worker offers no leases (its "
                           "reserved_hour_price is 0)", worker_id=worker_id)
    current = active_lease(tx, worker_id, now)
    if current is not None:
        raise precondition("WORKER_ALREADY_LEASED", "the worker is leased until "
                           f"{current['end_ms']} ms", worker_id=worker_id,
                           leased_until_ms=str(current["end_ms"]))
    lease_ms = duration_seconds * 1000
    held = check_amount(lease_charge(lease_ms, 0, rate, MAX_BPS), "duration_seconds")
    # Spend controls: a lease spends like an authorization of its whole hold, on this
    # worker. It cannot wait for an owner's approval, so above the threshold it is refused.
    scope = {"resource_class": worker["capabilities"]["resource_class"], "model": "",
             "max_prices": dict(ZERO_PRICES), "worker_id": worker_id, "worker_ids": []}
    if policy.check_authorization(tx, principal, wallet, held, scope, now).needs_approval:
        raise precondition("LEASE_NEEDS_APPROVAL", "the lease's hold is above the approval "
                           "threshold of the wallet's policy; leases are not approved one by "
                           "one: ask for a shorter lease", held=str(held))
    lease_id = "lse_" + secrets.token_hex(12)
    end_ms = now + lease_ms
    hold = ledger.hold(tx, wallet["wallet_id"], ledger.ESCROW_ACCOUNT, held, "lease_hold", now,
                       timeout_ms=end_ms + HOLD_MARGIN_MS, user_data={"lease_id": lease_id})
    seq = ledger.next_seq(tx, "lease_seq")
    lease = {"lease_id": lease_id, "wallet_id": wallet["wallet_id"],
             "owner_id": wallet["owner_id"], "worker_id": worker_id,
             "provider_id": worker["provider_id"], "endpoint": worker["endpoint"],
             "state": ACTIVE, "start_ms": now, "end_ms": end_ms, "reserved_ms": lease_ms,
             "reserved_hour_price": rate, "unused_reserved_bps": unused_bps,
             "quote_id": quote_id, "hold_id": hold["transfer_id"], "held": held, "used_ms": 0,
             "jobs_gpu_ms": 0,
             "charged": 0, "worker_payout": 0, "platform_fee": 0, "released": 0,
             "settle_ms": 0, "statement": {}, "create_ms": now}
    tx.put("leases", lease_id, lease)
    # This replaces a lease that ended but that the sweep has not settled yet.
    tx.put("worker_leases", worker_id, {"lease_id": lease_id})
    tx.put("lease_expiry", f"{end_ms:020d}/{lease_id}", {})
    tx.put("wallet_leases", f"{wallet['wallet_id']}/{seq:020d}", {"lease_id": lease_id})
    spend.add(tx, wallet["wallet_id"], now, held)
    journal.append(tx, "lease_created", {
        "lease_id": lease_id, "wallet_id": wallet["wallet_id"], "worker_id": worker_id,
        "reserved_ms": lease_ms, "reserved_hour_price": rate,
        "unused_reserved_bps": unused_bps, "held": held, "hold_id": hold["transfer_id"]}, now)
    return lease


def get(tx: Tx, principal: Principal, lease_id: str) -> Record:
    lease = tx.get("leases", validate.ident(lease_id, "lease_id"))
    if lease is None or not can_see_wallet_record(principal, lease):
        raise not_found("lease", lease_id)
    return lease


def list_leases(tx: Tx, principal: Principal, wallet_id: str, page_size: int,
                page_token: str) -> Record:
    wallet = get_wallet(tx, principal, wallet_id)
    found, token = pages.index_page(tx, "wallet_leases", f"{wallet['wallet_id']}/", "leases",
                                    "lease_id", page_size, page_token, newest_first=True)
    return {"leases": [with_usage(tx, lease) for lease in found], "next_page_token": token}


def job_authorizations(tx: Tx, lease_id: str) -> list[Record]:
    return [must_get(tx, "authorizations", row["authorization_id"])
            for _, row in tx.scan("lease_authorizations", prefix=f"{lease_id}/")]


def count_job(tx: Tx, ses: Record) -> None:
    """A session settles: if it ran under a lease, its GPU time is the lease's (counted
    here, since a sealed receipt takes the usage out of the settled session)."""
    if not ses.get("lease_id"):
        return
    lease = must_get(tx, "leases", ses["lease_id"])
    lease["jobs_gpu_ms"] += ses["usage"]["gpu_ms"]
    tx.put("leases", lease["lease_id"], lease)


def used_ms(tx: Tx, lease: Record) -> int:
    """GPU time of the lease's jobs so far: those settled, and the acknowledged usage of
    those still running; at most the lease."""
    total = lease["jobs_gpu_ms"]
    for auth in job_authorizations(tx, lease["lease_id"]):
        if auth["state"] == REDEEMED:
            total += must_get(tx, "sessions", auth["session_id"])["usage"]["gpu_ms"]
    return min(total, lease["reserved_ms"])


def with_usage(tx: Tx, lease: Record) -> Record:
    """The lease as shown: an active one with its used time so far."""
    return {**lease, "used_ms": used_ms(tx, lease)} if lease["state"] == ACTIVE else lease


def authorize_job(tx: Tx, principal: Principal, lease_id: str, model: str, now: int,
                  key_id: str) -> Record:
    """An authorization for one job on the leased worker, paid by the lease. It has the
    shape of authorizations.authorize's records, with no hold: amount 0, hold_id ""."""
    lease = get(tx, principal, lease_id)  # an agent sees only its own wallet's leases
    if lease["state"] != ACTIVE or now >= lease["end_ms"]:
        raise precondition("LEASE_ENDED", "the lease has ended", lease_id=lease_id)
    wallet = get_wallet(tx, principal, "")
    require_spendable(wallet)
    scope = {"resource_class": "", "model": validate.ident(model, "model", required=False),
             "max_prices": dict(ZERO_PRICES), "worker_id": lease["worker_id"],
             "worker_ids": []}
    authorization_id = "auth_" + secrets.token_hex(12)
    voucher_id = "vch_" + secrets.token_hex(12)
    seq = ledger.next_seq(tx, "authorization_seq")
    auth = {"authorization_id": authorization_id, "wallet_id": wallet["wallet_id"],
            "owner_id": wallet["owner_id"], "amount": 0, "scope": scope, "state": HELD,
            "hold_id": "", "voucher_id": voucher_id, "voucher_key_id": key_id,
            "expire_ms": lease["end_ms"], "create_ms": now, "charged": 0, "receipt_id": "",
            "session_id": "", "seq": seq, "key_id": principal.key_id, "lease_id": lease_id}
    tx.put("authorizations", authorization_id, auth)
    tx.put("wallet_authorizations", f"{wallet['wallet_id']}/{seq:020d}",
           {"authorization_id": authorization_id})
    tx.put("vouchers", voucher_id, {"voucher_id": voucher_id,
                                    "authorization_id": authorization_id,
                                    "session_id": "", "redeem_ms": 0})
    tx.put("lease_authorizations", f"{lease_id}/{seq:020d}",
           {"authorization_id": authorization_id})
    journal.append(tx, "lease_job_authorized", {"authorization_id": authorization_id,
                                                "lease_id": lease_id,
                                                "voucher_id": voucher_id}, now)
    return auth
