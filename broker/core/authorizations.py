"""Authorizations: a hold on a wallet plus the voucher that spends it."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from common import vouchers
from common.errors import BrokerError, Code, invalid, not_found, precondition
from common.money import check_amount, check_prices

from ..store.base import Record, Tx, must_get
from . import (
    budgets,
    delegation,
    holds,
    journal,
    labels,
    ledger,
    mandates,
    pages,
    policy,
    spend,
    validate,
)
from .access import Principal, can_see_wallet_record
from .config import CoreConfig
from .policy import DENIED, PENDING_APPROVAL
from .wallets import get_wallet, require_spendable

HELD, REDEEMED, SETTLED, CANCELLED, EXPIRED = "held", "redeemed", "settled", "cancelled", "expired"


def check_scope(scope: Record) -> Record:
    return {"resource_class": validate.ident(scope.get("resource_class", ""),
                                             "scope.resource_class", required=False),
            "model": validate.ident(scope.get("model", ""), "scope.model", required=False),
            "max_prices": check_prices(scope.get("max_prices", {}), "scope.max_prices"),
            "worker_id": validate.ident(scope.get("worker_id", ""), "scope.worker_id",
                                        required=False),
            "worker_ids": check_worker_ids(scope.get("worker_ids", []))}


MAX_WORKER_IDS = 16


def check_worker_ids(worker_ids: list[str]) -> list[str]:
    """Scope.worker_ids (pricing, issue 6): the workers that may redeem the voucher."""
    if len(worker_ids) > MAX_WORKER_IDS:
        raise invalid("scope.worker_ids", f"at most {MAX_WORKER_IDS} workers")
    return [validate.ident(w, f"scope.worker_ids[{i}]") for i, w in enumerate(worker_ids)]


def cache_scope_for(secret: bytes, owner_id: str) -> str:
    """Opaque and stable per owner: workers can share cache entries within one owner's
    jobs without learning who the owner is (an HMAC under a broker secret)."""
    return "cs_" + hmac.new(secret, owner_id.encode(), hashlib.sha256).hexdigest()[:32]


def authorize(tx: Tx, principal: Principal, amount: int, scope: Record, ttl_seconds: int,
              now: int, config: CoreConfig, key_id: str, *,
              cache_secret: bytes = b"", job_labels: dict[str, str] | None = None,
              holder_key: bytes = b"", mandate: str = "") -> Record:
    """Hold `amount` on the agent's wallet. The voucher is not stored: Ed25519 is
    deterministic, so `voucher_token` re-creates the same token from the record
    (a retried request gets its voucher back without the broker keeping it).
    `cache_secret` is given when the agent opted into result caching. `job_labels`
    are kept apart from the record (see labels.py). `holder_key` (a raw Ed25519 public
    key) lets its holder narrow the voucher offline (common/narrowing.py). `mandate` is
    the owner's signed mandate (mandates.py), checked when given, refused when missing
    where the policy requires one."""
    check_amount(amount, "amount")
    scope = check_scope(scope)
    job_labels = labels.check(job_labels or {})
    if holder_key and len(holder_key) != 32:
        raise invalid("holder_public_key", "must be a raw 32-byte Ed25519 public key")
    ttl_ms = ttl_seconds * 1000 if ttl_seconds else config.default_ttl_ms
    if not 0 < ttl_ms <= config.max_ttl_ms:
        raise invalid("ttl_seconds", f"must be between 1 and {config.max_ttl_ms // 1000}")
    wallet = get_wallet(tx, principal, "")
    require_spendable(wallet)
    # A sub-budget: its tree must not be stopped, the scope must be within it.
    expire_ms = delegation.check_authorization(tx, wallet, scope, now + ttl_ms, now)
    if cache_secret:
        scope["cache_scope"] = cache_scope_for(cache_secret, wallet["owner_id"])
    if scope["worker_id"] and tx.get("workers", scope["worker_id"]) is None:
        raise not_found("worker", scope["worker_id"])
    # Spend controls (broker/core/policy.py): scope rules, limits, velocity, approvals.
    verdict = policy.check_authorization(tx, principal, wallet, amount, scope, now)
    signed, expire_ms = mandates.check(tx, principal, wallet, mandate, amount, scope,
                                       expire_ms, now)
    authorization_id = "auth_" + secrets.token_hex(12)
    # The voucher id is independent of the authorization id: workers cannot link them.
    voucher_id = "vch_" + secrets.token_hex(12)
    seq = ledger.next_seq(tx, "authorization_seq")
    auth = {"authorization_id": authorization_id, "wallet_id": wallet["wallet_id"],
            "owner_id": wallet["owner_id"], "amount": amount, "scope": scope, "state": HELD,
            "hold_id": "", "voucher_id": voucher_id, "voucher_key_id": key_id,
            "expire_ms": expire_ms, "create_ms": now, "charged": 0, "receipt_id": "",
            "session_id": "", "seq": seq, "key_id": principal.key_id,
            "holder_key": vouchers.b64e(holder_key) if holder_key else ""}
    tx.put("wallet_authorizations", f"{wallet['wallet_id']}/{seq:020d}",
           {"authorization_id": authorization_id})
    labels.store(tx, authorization_id, wallet["owner_id"], job_labels)
    mandates.bind(tx, auth, signed)
    if verdict.needs_approval:
        policy.request_approval(tx, auth, ttl_ms, verdict, now)
    else:
        activate(tx, auth, now)
    policy.record_authorization(tx, wallet, auth, now)
    return auth


def activate(tx: Tx, auth: Record, now: int) -> None:
    """Hold the amount until `expire_ms` and make the voucher redeemable (at once, or
    when an owner approves)."""
    held = holds.wallet_hold(tx, auth["wallet_id"], auth["amount"], "hold", now,
                             timeout_ms=auth["expire_ms"],
                             user_data={"authorization_id": auth["authorization_id"]})
    auth.update(state=HELD, hold_id=held["transfer_id"])
    tx.put("authorizations", auth["authorization_id"], auth)
    tx.put("vouchers", auth["voucher_id"], {"voucher_id": auth["voucher_id"],
                                            "authorization_id": auth["authorization_id"],
                                            "session_id": "", "redeem_ms": 0})
    journal.append(tx, "authorized", {"authorization_id": auth["authorization_id"],
                                      "wallet_id": auth["wallet_id"], "amount": auth["amount"],
                                      "hold_id": auth["hold_id"],
                                      "voucher_id": auth["voucher_id"]}, now)


def has_voucher(auth: Record) -> bool:
    """False while waiting for approval (PENDING_APPROVAL) and once refused (DENIED)."""
    return auth["state"] not in (PENDING_APPROVAL, DENIED)


def voucher_token(auth: Record, signer: vouchers.Signer) -> str:
    """The authorization's voucher, signed by `signer` (the key named in the record)."""
    assert signer.key_id == auth["voucher_key_id"], "sign with the key the record names"
    return vouchers.issue(signer, vouchers.VoucherClaims(
        voucher_id=auth["voucher_id"], amount=auth["amount"],
        scope=labels.for_worker(auth["scope"]),
        issued_ms=auth["create_ms"], expire_ms=auth["expire_ms"],
        holder_key=auth.get("holder_key", "")))


def get_authorization(tx: Tx, principal: Principal, authorization_id: str) -> Record:
    auth = tx.get("authorizations", validate.ident(authorization_id, "authorization_id"))
    if auth is None or not can_see_wallet_record(principal, auth):
        raise not_found("authorization", authorization_id)
    return auth


def list_authorizations(tx: Tx, principal: Principal, wallet_id: str, page_size: int,
                        page_token: str) -> Record:
    wallet = get_wallet(tx, principal, wallet_id)
    auths, token = pages.index_page(tx, "wallet_authorizations", f"{wallet['wallet_id']}/",
                                    "authorizations", "authorization_id", page_size,
                                    page_token, newest_first=True)
    return {"authorizations": auths, "next_page_token": token}


def cancel(tx: Tx, principal: Principal, authorization_id: str, now: int) -> Record:
    auth = get_authorization(tx, principal, authorization_id)
    if auth["state"] != HELD:
        raise precondition("AUTHORIZATION_NOT_CANCELLABLE",
                           f"authorization is {auth['state']}; only a held, unredeemed "
                           "authorization can be cancelled",
                           authorization_id=authorization_id, state=auth["state"])
    if auth["hold_id"]:  # (a job under a lease has no hold of its own: leases.py)
        ledger.resolve(tx, auth["hold_id"], ledger.VOID_PENDING, now)
    spend.release(tx, auth, auth["amount"])
    auth["state"] = CANCELLED
    tx.put("authorizations", auth["authorization_id"], auth)
    journal.append(tx, "authorization_cancelled",
                   {"authorization_id": auth["authorization_id"]}, now)
    return auth


def get_receipt(tx: Tx, principal: Principal, authorization_id: str) -> Record:
    """The receipt of a settled authorization: the caller's, or for an agent key also
    one of a sub-budget below its wallet (receipts roll up to the parents; the
    authorization itself, e.g. to cancel it, stays its own wallet's)."""
    auth = tx.get("authorizations", validate.ident(authorization_id, "authorization_id"))
    if auth is None or not (can_see_wallet_record(principal, auth) or (
            principal.role == "agent" and
            budgets.is_below(tx, auth["wallet_id"], principal.wallet_id))):
        raise not_found("authorization", authorization_id)
    if not auth["receipt_id"]:
        raise BrokerError(Code.FAILED_PRECONDITION, "RECEIPT_NOT_READY",
                          f"authorization is {auth['state']}; receipts exist once settled",
                          {"authorization_id": authorization_id, "state": auth["state"]})
    return must_get(tx, "receipts", auth["receipt_id"])
