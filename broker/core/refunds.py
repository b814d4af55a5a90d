"""Disputes and refunds of settled charges.

An owner disputes a receipt of its tenant. An admin refunds all or part of a settled
charge: a new transfer (transfers are immutable; nothing is undone) from the
provider's payout account back to the wallet, plus the platform fee's share of the
amount from the platform fees, so that a full refund reverses the charge exactly:
fee share = floor(refunded so far x fee / charged), computed on the running total so
that the shares never drift from the settlement's split. Refunds of one receipt never
add up to more than it charged, and a second refund of the same amount for the same
receipt is refused as a duplicate (a retry with the same request_id gets the first
answer instead). The refund lands in the wallet, or in the owner's treasury when the
wallet is at its cap. Each refund is signed like a receipt and names the receipt and
the worker's signed usage the charge was based on. Statements count a refund in the
period it was made in (coarsened like receipts' periods, never finer than the broker's
receipt_period_ms), through the owner_refunds and provider_refunds indexes written with it.
"""

from __future__ import annotations

import base64
import secrets

from common import vouchers
from common.errors import BrokerError, Code, not_found, precondition
from common.money import check_amount

from ..store.base import Record, Tx, must_get
from . import budgets, journal, ledger, pages, validate
from .access import Principal, can_see_owner
from .config import CoreConfig
from .receipts import period_of
from .tenancy import get_owner

REFUND_SIGNED_FIELDS = ("refund_id", "receipt_id", "authorization_id", "session_id",
                        "wallet_id", "amount", "provider_refund", "fee_refund",
                        "credited_account_id", "reason", "dispute_id", "worker_usage",
                        "refund_ms")


def _receipt(tx: Tx, principal: Principal, receipt_id: str) -> tuple[Record, Record]:
    """(receipt, its authorization) if the principal may see them."""
    receipt = tx.get("receipts", validate.ident(receipt_id, "receipt_id"))
    if receipt is None:
        raise not_found("receipt", receipt_id)
    auth = must_get(tx, "authorizations", receipt["authorization_id"])
    if not can_see_owner(principal, auth["owner_id"]):
        raise not_found("receipt", receipt_id)
    return receipt, auth


def dispute(tx: Tx, principal: Principal, receipt_id: str, reason: str, now: int) -> Record:
    validate.name(reason, "reason", required=True)
    receipt, auth = _receipt(tx, principal, receipt_id)
    if tx.get("receipt_disputes", receipt["receipt_id"]) is not None:
        raise precondition("DISPUTE_ALREADY_OPEN", "this receipt is already disputed",
                           receipt_id=receipt["receipt_id"])
    seq = ledger.next_seq(tx, "dispute_seq")
    record = {"dispute_id": f"dsp_{seq:016d}", "receipt_id": receipt["receipt_id"],
              "authorization_id": auth["authorization_id"], "wallet_id": auth["wallet_id"],
              "owner_id": auth["owner_id"], "reason": reason, "state": "open", "refunded": 0,
              "create_ms": now}
    tx.put("disputes", record["dispute_id"], record)
    tx.put("receipt_disputes", receipt["receipt_id"], {"dispute_id": record["dispute_id"]})
    tx.put("owner_disputes", f"{auth['owner_id']}/{seq:020d}",
           {"dispute_id": record["dispute_id"]})
    journal.append(tx, "receipt_disputed", {"dispute_id": record["dispute_id"],
                                            "receipt_id": receipt["receipt_id"],
                                            "reason": reason, "by": principal.key_id}, now)
    return record


def list_disputes(tx: Tx, principal: Principal, page_size: int, page_token: str) -> Record:
    """Newest first: the tenant's for owners, every dispute for admins and global auditors."""
    table, prefix = ("owner_disputes", f"{principal.owner_id}/") if principal.owner_id \
        else ("disputes", "")
    found, token = pages.index_page(tx, table, prefix, "disputes", "dispute_id", page_size,
                                    page_token, newest_first=True)
    return {"disputes": found, "next_page_token": token}


def refund(tx: Tx, principal: Principal, receipt_id: str, amount: int, reason: str,
           now: int, config: CoreConfig, signer: vouchers.Signer) -> Record:
    check_amount(amount, "amount")
    validate.name(reason, "reason", required=True)
    receipt, auth = _receipt(tx, principal, receipt_id)
    receipt_id = receipt["receipt_id"]
    earlier = [row["amount"] for _, row in tx.scan("receipt_refunds", prefix=f"{receipt_id}/")]
    if amount in earlier:
        raise precondition("REFUND_DUPLICATE",
                           f"a refund of {amount} was already made for this receipt",
                           receipt_id=receipt_id, amount=str(amount))
    refunded, charged = sum(earlier), receipt["charged"]
    if refunded + amount > charged:
        raise BrokerError(Code.FAILED_PRECONDITION, "REFUND_EXCEEDS_CHARGE",
                          f"{amount} would take refunds to {refunded + amount}, above the "
                          f"{charged} charged", {"receipt_id": receipt_id,
                                                 "charged": str(charged),
                                                 "refunded": str(refunded)},
                          quota_violations=[(f"receipt:{receipt_id}",
                                             f"{charged} charged, {refunded} refunded, "
                                             f"{amount} requested")])
    fee = receipt["platform_fee"]
    fee_refund = (refunded + amount) * fee // charged - refunded * fee // charged
    provider_refund = amount - fee_refund
    wallet = must_get(tx, "wallets", auth["wallet_id"])
    # A sub-budget's charge came out of its root wallet: the refund goes back there.
    payer = must_get(tx, "wallets", budgets.funding_wallet(tx, wallet["wallet_id"]))
    credited = payer["wallet_id"]
    if ledger.balance(ledger.get_account(tx, credited))["posted"] + amount > payer["cap"]:
        credited = get_owner(tx, wallet["owner_id"])["treasury_account_id"]
    budgets.on_refund(tx, wallet["wallet_id"], amount)
    refund_id = "rfd_" + secrets.token_hex(12)
    legs = {"refund_id": refund_id, "receipt_id": receipt_id}
    payout_account = must_get(tx, "providers", receipt["provider_id"])["payout_account_id"]
    transfers = []
    if provider_refund:
        transfers.append(ledger.transfer(tx, payout_account, credited, provider_refund,
                                         "refund", now, legs)["transfer_id"])
    if fee_refund:
        transfers.append(ledger.transfer(tx, ledger.FEE_ACCOUNT, credited, fee_refund,
                                         "fee_refund", now, legs)["transfer_id"])
    disputed = tx.get("receipt_disputes", receipt_id)
    record = _sign(signer, {
        "refund_id": refund_id, "receipt_id": receipt_id,
        # A sealed receipt keeps its session inside the seal (docs/privacy.md): the refund
        # then links to it through the receipt id.
        "authorization_id": auth["authorization_id"],
        "session_id": receipt.get("session_id", ""),
        "wallet_id": wallet["wallet_id"], "amount": amount, "provider_refund": provider_refund,
        "fee_refund": fee_refund, "credited_account_id": credited, "reason": reason,
        "dispute_id": disputed["dispute_id"] if disputed else "",
        "worker_usage": receipt.get("worker_usage", {"payload": "", "signature": ""}),
        "refund_ms": now})
    tx.put("refunds", refund_id, {**record, "transfer_ids": transfers})
    tx.put("receipt_refunds", f"{receipt_id}/{refund_id}", {"amount": amount})
    index_for_statements(tx, record, receipt, config.receipt_period_ms)
    if disputed:
        found = must_get(tx, "disputes", disputed["dispute_id"])
        found.update(state="refunded", refunded=found["refunded"] + amount)
        tx.put("disputes", found["dispute_id"], found)
    journal.append(tx, "receipt_refunded", {
        "refund_id": refund_id, "receipt_id": receipt_id, "amount": amount,
        "provider_refund": provider_refund, "fee_refund": fee_refund,
        "credited_account_id": credited, "transfer_ids": transfers, "reason": reason,
        "by": principal.key_id}, now)
    return record


def index_for_statements(tx: Tx, refund: Record, receipt: Record, period_ms: int) -> None:
    """The rows statements read (statements.py): by owner and by provider, under the
    period the refund was made in. Like receipts' index rows, they keep only the period."""
    start, _ = period_of(refund["refund_ms"], period_ms)
    tx.put("owner_refunds", f"{receipt['owner_id']}/{start:016d}/{refund['refund_id']}", {
        "wallet_id": receipt["wallet_id"], "payment_model": receipt["payment_model"],
        "amount": refund["amount"]})
    tx.put("provider_refunds", f"{receipt['provider_id']}/{start:016d}/{refund['refund_id']}",
           {"amount": refund["amount"], "payout": refund["provider_refund"],
            "fee": refund["fee_refund"]})


def _sign(signer: vouchers.Signer, fields: Record) -> Record:
    payload = journal.canonical({k: fields[k] for k in REFUND_SIGNED_FIELDS})
    return {**fields, "key_id": signer.key_id,
            "signed_payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(signer.sign(payload)).decode()}
