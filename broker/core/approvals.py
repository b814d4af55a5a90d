"""The approval workflow: an authorization above the policy's threshold waits, without a
voucher, until an owner of its tenant approves or denies it; unanswered, it is denied
at its deadline. The request is opened by `policy.request_approval`.

- approve: any reservation is released and a hold placed for the voucher's lifetime
  (in one atomic step, so reserved funds cannot be lost in between), the voucher
  becomes redeemable, and the agent gets it from GetApproval or WatchAuthorization;
- deny, or expiry: the reservation is released and the authorization is DENIED;
  the spend it counted against the limits is released too.

Every decision is journaled ("approval_decided") with who decided and why.
"""

from __future__ import annotations

from common.errors import invalid, not_found, precondition

from ..store.base import Record, Tx, due, must_get
from . import alerts, authorizations, journal, ledger, mandates, pages, policy, spend, validate
from .access import Principal, listed_owner
from .wallets import require_spendable

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"


def get(tx: Tx, principal: Principal, authorization_id: str) -> tuple[Record, Record]:
    """(approval, authorization) if the principal may see the authorization."""
    auth = authorizations.get_authorization(tx, principal, authorization_id)
    approval = tx.get("approvals", auth["authorization_id"])
    if approval is None:
        raise not_found("approval", authorization_id)
    return approval, auth


def state_of(tx: Tx, principal: Principal, authorization_id: str) -> tuple[Record, Record | None]:
    """(authorization, its approval request or None if it needed none)."""
    auth = authorizations.get_authorization(tx, principal, authorization_id)
    return auth, tx.get("approvals", auth["authorization_id"])


def list_pending(tx: Tx, principal: Principal, owner_id: str, wallet_id: str, page_size: int,
                 page_token: str) -> Record:
    """An owner's pending requests, oldest first (optionally of one wallet). Admins and
    global auditors name the owner, or a wallet (its owner's)."""
    size = validate.page_size(page_size)
    validate.ident(wallet_id, "wallet_id", required=False)
    if not owner_id and not principal.owner_id and wallet_id:
        wallet = tx.get("wallets", wallet_id)
        if wallet is None:
            raise not_found("wallet", wallet_id)
        owner_id = wallet["owner_id"]
    prefix = f"{listed_owner(principal, owner_id)}/"
    after = pages.decode(page_token)
    if after and not after.startswith(prefix):
        raise invalid("page_token", "belongs to another listing", "INVALID_PAGE_TOKEN")
    found: list[Record] = []
    last = ""
    for key, row in tx.scan("pending_approvals", prefix=prefix,
                            start=after + "\x00" if after else None):
        approval = must_get(tx, "approvals", row["authorization_id"])
        if wallet_id and approval["wallet_id"] != wallet_id:
            continue
        if len(found) == size:
            return {"approvals": found, "next_page_token": pages.encode(last)}
        found.append(approval)
        last = key
    return {"approvals": found, "next_page_token": ""}


def _pending(tx: Tx, principal: Principal, authorization_id: str) -> tuple[Record, Record]:
    approval, auth = get(tx, principal, authorization_id)
    if approval["state"] != PENDING:
        raise precondition("APPROVAL_NOT_PENDING",
                           f"the request was already {approval['state']}",
                           authorization_id=auth["authorization_id"], state=approval["state"])
    return approval, auth


def _release_reservation(tx: Tx, auth: Record, now: int) -> None:
    if auth["hold_id"] and ledger.get_hold(tx, auth["hold_id"])[1]["state"] == "pending":
        ledger.resolve(tx, auth["hold_id"], ledger.VOID_PENDING, now)


def _close(tx: Tx, approval: Record, state: str, reason: str, by: str, now: int) -> None:
    auth_id = approval["authorization_id"]
    approval.update(state=state, reason=reason, decided_by=by, decide_ms=now)
    tx.put("approvals", auth_id, approval)
    tx.delete("pending_approvals", f"{approval['owner_id']}/{approval['seq']:020d}")
    for timer in ("expire", "alert"):
        ms = approval["deadline_ms"] if timer == "expire" else approval["alert_ms"]
        tx.delete("approval_timers", f"{ms:020d}/{auth_id}/{timer}")
    journal.append(tx, "approval_decided", {"authorization_id": auth_id, "decision": state,
                                            "reason": reason, "by": by}, now)


def approve(tx: Tx, principal: Principal, authorization_id: str, reason: str,
            now: int) -> tuple[Record, Record]:
    validate.name(reason, "reason")
    approval, auth = _pending(tx, principal, authorization_id)
    if auth["state"] != policy.PENDING_APPROVAL:  # its reservation timed out first
        raise precondition("APPROVAL_NOT_PENDING", f"the authorization is {auth['state']}",
                           authorization_id=auth["authorization_id"], state=auth["state"])
    require_spendable(must_get(tx, "wallets", auth["wallet_id"]))
    _release_reservation(tx, auth, now)
    auth["expire_ms"] = mandates.expiry_within(tx, auth, now + approval["ttl_ms"], now)
    authorizations.activate(tx, auth, now)
    _close(tx, approval, APPROVED, reason, principal.key_id, now)
    return approval, auth


def deny(tx: Tx, principal: Principal, authorization_id: str, reason: str,
         now: int) -> tuple[Record, Record]:
    validate.name(reason, "reason", required=True)
    approval, auth = _pending(tx, principal, authorization_id)
    _refuse(tx, approval, auth, DENIED, reason, principal.key_id, now)
    return approval, auth


def _refuse(tx: Tx, approval: Record, auth: Record, state: str, reason: str, by: str,
            now: int) -> None:
    if auth["state"] == policy.PENDING_APPROVAL:
        _release_reservation(tx, auth, now)
        spend.release(tx, auth, auth["amount"])
        auth["state"] = policy.DENIED
        tx.put("authorizations", auth["authorization_id"], auth)
        wallet = must_get(tx, "wallets", auth["wallet_id"])
        alerts.observe_denial(tx, wallet, "APPROVAL_" + state.upper(),
                              policy.alert_rules(tx, wallet), now)
    # Otherwise its reservation already timed out (and the expiry released it).
    _close(tx, approval, state, reason, by, now)


def expire_due(tx: Tx, now: int, limit: int = 200) -> int:
    """Deny unanswered requests whose deadline passed; raise the alert for requests
    pending longer than the policy allows."""
    rows = due(tx, "approval_timers", f"{now + 1:020d}", limit)
    for key, _ in rows:
        tx.delete("approval_timers", key)
        auth_id, timer = key.split("/")[1:]
        approval = must_get(tx, "approvals", auth_id)
        if approval["state"] != PENDING:
            continue
        wallet = must_get(tx, "wallets", approval["wallet_id"])
        rules = policy.alert_rules(tx, wallet)
        waited_s = (now - approval["request_ms"]) // 1000
        if timer == "alert":
            alerts.raise_alert(tx, "approval_pending_too_long", approval["owner_id"],
                               approval["wallet_id"],
                               f"authorization {auth_id} has waited {waited_s} s for approval",
                               now, rules, observed=waited_s, subject=auth_id)
        else:
            auth = must_get(tx, "authorizations", auth_id)
            _refuse(tx, approval, auth, EXPIRED, f"no answer within {waited_s} s", "", now)
    return len(rows)
