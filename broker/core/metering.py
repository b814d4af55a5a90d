"""Redemption, usage and settlement: the money side of a metering session.

Redemption marks the voucher used in the same atomic operation that opens the
session, so of any number of concurrent attempts exactly one wins. Settlement
is one atomic operation of linked legs: post the used part of the hold (the rest
is released), pay the provider less the platform fee, then refill the wallet.
"""

from __future__ import annotations

import base64
import functools
import secrets

from common import usage_signing, vouchers
from common.errors import BrokerError, Code, not_found, precondition
from common.money import split_fee

from ..store.base import Record, Tx, must_get
from . import (
    families,
    journal,
    killswitch,
    ledger,
    policy,
    pricing,
    receipts,
    refills,
    session,
    settled,
    spend,
    validate,
)
from .access import Principal
from .authorizations import CANCELLED, EXPIRED, HELD, REDEEMED, SETTLED
from .config import CoreConfig
from .registry import get_own_worker, inactive

FINISHED, STOPPED, HOLD_EXPIRED = "FINISHED", "STOPPED", "HOLD_EXPIRED"


def redeem(tx: Tx, principal: Principal, claims: vouchers.VoucherClaims, worker_id: str,
           resource_class: str, model: str, now: int, config: CoreConfig) -> Record:
    """Open a session for a verified voucher; exactly once per voucher."""
    worker = get_own_worker(tx, principal, worker_id)
    if not worker["active"]:
        raise inactive(worker_id)
    # A voucher narrowed offline is one of a family (families.py): its key is
    # "<original voucher id>/<its own id>", and `auth` is the original's.
    voucher_key, voucher, auth = families.lookup(tx, claims)
    if voucher is None or auth is None:
        # Only possible with a validly signed voucher we never issued.
        raise BrokerError(Code.PERMISSION_DENIED, "VOUCHER_UNKNOWN",
                          "the voucher was not issued by this broker")
    if voucher["session_id"]:
        raise BrokerError(Code.FAILED_PRECONDITION, "VOUCHER_ALREADY_REDEEMED",
                          "the voucher was already redeemed", {"voucher_id": claims.voucher_id})
    if auth["state"] == CANCELLED:
        raise precondition("AUTHORIZATION_CANCELLED", "the authorization was cancelled",
                           voucher_id=claims.voucher_id)
    if auth["state"] == EXPIRED or now >= auth["expire_ms"]:
        raise precondition("VOUCHER_EXPIRED", "voucher has expired", voucher_id=claims.voucher_id)
    assert auth["state"] == HELD, "an unredeemed voucher's authorization is held"
    # Pricing (issue 6): prices bound by a quote or a lease; a leased worker's exclusivity.
    worker, terms = pricing.redemption_terms(tx, auth, worker, model, now)
    vouchers.check_scope(claims.scope, worker, validate.ident(resource_class, "open.resource_class",
                                                      required=False),
                 validate.ident(model, "open.model", required=False))
    families.check_room(tx, auth, claims)
    if len(claims.chain) > 1:  # derived: its own authorization, carved out of the hold
        auth = families.carve(tx, auth, claims, voucher_key, now)
    new = {**session.new_session("ses_" + secrets.token_hex(12), auth, voucher_key,
                                 worker, now, config.report_interval_ms), **terms}
    # What the job ran on, for the owner's itemised receipt.
    new.update(model=model,
               resource_class=resource_class or worker["capabilities"]["resource_class"])
    # Spend controls: the kill switch, and first use of a worker for the alerts.
    new = killswitch.on_redeem(tx, new, auth, now)
    policy.record_redemption(tx, auth, worker_id, now)
    tx.put("sessions", new["session_id"], new)
    voucher.update(session_id=new["session_id"], redeem_ms=now,
                   authorization_id=auth["authorization_id"])
    tx.put("vouchers", voucher_key, voucher)
    auth.update(state=REDEEMED, session_id=new["session_id"])
    tx.put("authorizations", auth["authorization_id"], auth)
    journal.append(tx, "voucher_redeemed", {"voucher_id": voucher_key,
                                            "session_id": new["session_id"],
                                            "worker_id": worker_id}, now)
    return new


def get_own_session(tx: Tx, principal: Principal, session_id: str, worker_id: str) -> Record:
    found = tx.get("sessions", validate.ident(session_id, "session_id"))
    if found is None or found["provider_id"] != principal.provider_id or \
            (worker_id and found["worker_id"] != worker_id):
        raise not_found("session", session_id)
    return found


def attach(tx: Tx, principal: Principal, session_id: str, worker_id: str) -> Record:
    """A stream takes the session (opens or resumes it): a new epoch, the fencing token
    its usage reports and finish carry (`fence`), so that a stream attached before, on
    this broker or another one that has stalled, can no longer write to it. A settled
    session is returned as it is (the caller refuses it)."""
    found = get_own_session(tx, principal, session_id, worker_id)
    if found["state"] != session.OPEN:
        return found
    attached = {**found, "epoch": found.get("epoch", 0) + 1}
    tx.put("sessions", session_id, attached)
    return attached


def resume(tx: Tx, principal: Principal, session_id: str,
           worker_id: str) -> tuple[Record, Record | None]:
    """A stream resumes the session (`attach`): the session, and for a settled one the
    worker's copy of its settlement (settled.py), which the stream answers instead of a
    grant; SESSION_ALREADY_SETTLED when that cannot be rebuilt."""
    ses = attach(tx, principal, session_id, worker_id)
    if ses["state"] == session.OPEN:
        return ses, None
    copy = settled.worker_copy(tx, ses)
    if copy is None:
        session.require_open(ses)  # raises: it is settled
    return ses, copy


def fence(current: Record, epoch: int | None) -> None:
    """Refuse a write of a stream that attached at `epoch` (None: no stream, e.g. the
    sweep) when another stream has attached since."""
    if epoch is not None and current.get("epoch", 0) != epoch:
        raise BrokerError(
            Code.ABORTED, "SESSION_RESUMED_ELSEWHERE",
            f"session {current['session_id']} was resumed on another stream after this "
            "one attached; this stream's report or finish is refused and charges "
            "nothing: continue on the newer stream, or resume again",
            {"session_id": current["session_id"], "epoch": str(epoch),
             "current_epoch": str(current.get("epoch", 0))})


def record_usage(tx: Tx, principal: Principal, session_id: str, seq: int, usage: Record,
                 now: int, signature: bytes = b"",
                 verified: usage_signing.Verified | None = None,
                 elapsed_ms: int | None = None, *, worker_id: str = "",
                 batch: bytes = b"", epoch: int | None = None) -> session.UsageDecision:
    """`verified`: the signature was checked outside the writer (usage_signing);
    `elapsed_ms`: monotonic time since the stream's previous report, if known.
    `batch`: the report came in a MeterWorker batch (of `worker_id`), and `signature` is
    over these signed batch bytes, which must list the report's payload. `epoch`: the
    one the reporting stream attached with (`fence`)."""
    current = get_own_session(tx, principal, session_id, worker_id)
    fence(current, epoch)
    if verified is not None and verified.public_key_hex == current["usage_public_key"]:
        message = verified.message
    else:
        message = usage_signing.payload(session_id, usage, seq=seq)
        if batch and current["usage_public_key"] and \
                not usage_signing.in_batch(message, batch):
            raise usage_signing.not_signed()
        usage_signing.verify(current["usage_public_key"], batch or message, signature)
    decision = session.on_usage(current, seq, usage, now, elapsed_ms)
    decision = killswitch.on_usage(tx, current, decision, now)  # STOP if frozen or revoked
    if decision.session is not current:
        decision.session["signed_usage"] = _signed(message, signature, batch)
        tx.put("sessions", session_id, decision.session)
        if decision.stop_reason:
            journal.append(tx, "session_stopped", {"session_id": session_id,
                                                   "reason": decision.stop_reason,
                                                   "charged": decision.charged}, now)
    return decision


def finish(tx: Tx, principal: Principal, session_id: str, usage: Record, now: int,
           config: CoreConfig, signer: vouchers.Signer, signature: bytes = b"",
           verified: usage_signing.Verified | None = None, *, worker_id: str = "",
           batch: bytes = b"", epoch: int | None = None) -> Record:
    """`verified`, `batch` (of `worker_id`) and `epoch` as for record_usage: a finish in
    a MeterWorker batch is signed with the batch, which lists its final payload."""
    current = get_own_session(tx, principal, session_id, worker_id)
    fence(current, epoch)
    # A repeat of the finish that settled the session (its answer was lost) gets the
    # same settlement again; any other finish of a settled session is refused.
    again = None if current["state"] == session.OPEN else \
        settled.repeated_finish(tx, current, usage)
    message = usage_signing.payload(session_id, usage, final=True)
    if verified is None or verified.public_key_hex != current["usage_public_key"] or \
            verified.message != message:
        try:
            if batch and current["usage_public_key"] and \
                    not usage_signing.in_batch(message, batch):
                raise usage_signing.not_signed()
            usage_signing.verify(current["usage_public_key"], batch or message, signature)
        except BrokerError:
            if again is not None:  # not signed as the first one was: refused as before
                session.require_open(current)
            raise
    if again is not None:
        return again
    if now >= current["expire_ms"]:
        # Too late: the hold timed out, so only acknowledged usage counts.
        return settle(tx, current, HOLD_EXPIRED, now, config, signer)
    final = {**session.on_finish(current, usage),
             "signed_usage": _signed(message, signature, batch)}
    return settle(tx, final, STOPPED if current["stop_reason"] else FINISHED, now, config,
                  signer, by_finish=True)


def _signed(message: bytes, signature: bytes, batch: bytes = b"") -> Record:
    if not signature:
        return {"payload": "", "signature": ""}
    signed = {"payload": base64.b64encode(message).decode(),
              "signature": base64.b64encode(signature).decode()}
    if batch:  # the signature is over the batch, which lists the payload's digest
        signed["batch"] = _b64(batch)
    return signed


@functools.lru_cache(maxsize=16)
def _b64(batch: bytes) -> str:
    # Every report of a MeterWorker batch keeps the same batch bytes: encoded once.
    return base64.b64encode(batch).decode()


def capture(tx: Tx, hold_id: str, charged: int, provider_id: str, legs: Record, now: int,
            config: CoreConfig) -> tuple[int, int]:
    """The linked legs of a settlement: post `charged` of the hold (the rest is released)
    or void it, then pay the provider and the platform fee out of escrow.
    Returns (payout, fee)."""
    payout, fee = split_fee(charged, config.fee_bps)
    if charged:
        ledger.resolve(tx, hold_id, ledger.POST_PENDING, now, amount=charged)
    elif hold_id:  # (a job under a lease has no hold of its own: leases.py)
        ledger.resolve(tx, hold_id, ledger.VOID_PENDING, now)
    if payout:
        provider = must_get(tx, "providers", provider_id)
        ledger.transfer(tx, ledger.ESCROW_ACCOUNT, provider["payout_account_id"], payout,
                        "payout", now, legs)
    if fee:
        ledger.transfer(tx, ledger.ESCROW_ACCOUNT, ledger.FEE_ACCOUNT, fee, "platform_fee", now,
                        legs)
    return payout, fee


def settle(tx: Tx, ses: Record, outcome: str, now: int, config: CoreConfig,
           signer: vouchers.Signer, *, by_finish: bool = False) -> Record:
    """Settle atomically; returns the receipt as the worker sees it. `signer` is the
    receipt-signing key; `by_finish`: on the usage of the worker's finish."""
    pricing.on_settle(tx, ses, outcome, now)  # (its lease's used time, the job history)
    auth = must_get(tx, "authorizations", ses["authorization_id"])
    charged = ses["charged"]
    payout, fee = capture(tx, auth["hold_id"], charged, ses["provider_id"],
                          {"authorization_id": auth["authorization_id"]}, now, config)
    spend.release(tx, auth, auth["amount"] - charged)
    receipt = receipts.issue(tx, auth, ses, outcome, now, config, signer, payout=payout,
                             fee=fee)
    tx.put("sessions", ses["session_id"],
           receipts.settled_session(ses, receipt, outcome, now, by_finish))
    auth.update(state=SETTLED, charged=charged, receipt_id=receipt["receipt_id"])
    tx.put("authorizations", auth["authorization_id"], auth)
    journal.append(tx, "session_settled", {
        "session_id": ses["session_id"], "authorization_id": auth["authorization_id"],
        "charged": charged, "payout": payout, "fee": fee, "outcome": outcome,
        "receipt_id": receipt["receipt_id"]}, now)
    refills.after_settlement(tx, must_get(tx, "wallets", auth["wallet_id"]), outcome, now)
    return receipts.worker_view(receipt, ses, outcome, now)


def expire_due(tx: Tx, now: int, config: CoreConfig, signer: vouchers.Signer,
               limit: int = 500) -> int:
    """Resolve every hold whose timeout has passed (also those that passed while the
    broker was down): unredeemed holds are released; holds of sessions whose worker
    never finished are settled on the last acknowledged usage."""
    due = ledger.due_holds(tx, now, limit)
    for hold_id in due:
        expire_hold(tx, hold_id, now, config, signer)
    return len(due)


def expire_hold(tx: Tx, hold_id: str, now: int, config: CoreConfig,
                signer: vouchers.Signer) -> None:
    """Resolve one hold whose timeout has passed (the sweep's step for each)."""
    pending, _ = ledger.get_hold(tx, hold_id)
    auth = must_get(tx, "authorizations", pending["user_data"]["authorization_id"])
    if auth["state"] == REDEEMED:
        settle(tx, must_get(tx, "sessions", auth["session_id"]), HOLD_EXPIRED, now, config,
               signer)
    else:
        ledger.resolve(tx, hold_id, ledger.EXPIRE_PENDING, now)
        spend.release(tx, auth, auth["amount"])
        auth["state"] = EXPIRED
        tx.put("authorizations", auth["authorization_id"], auth)
        journal.append(tx, "authorization_expired",
                       {"authorization_id": auth["authorization_id"]}, now)
