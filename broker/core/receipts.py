"""Receipts: an outward part signed by the broker, an itemised part sealed to the owner.

The outward part says what happened to the money, and when only coarsely: receipt
id, held, charged, released, worker payout, platform fee, and the hour or day the
settlement fell in. The itemised part says what the job was: model, resource class,
worker, usage breakdown, prices, outcome, labels, exact times and the worker's signed
usage. When the owner has registered an X25519 receipt key, the itemised part is
signed, sealed to that key (sealing.py) and stored only in that form; the labels are
deleted and the settled session is stripped of its usage and model, so the sealed
receipt is the one place the broker still holds them. Only what lets the agent check
its charge stays beside the seal: the prices and the worker's signed usage counters.
An owner without a receipt key gets the itemised part in clear, as the broker has
nothing to seal it to.

Receipt ids are random and unrelated to authorization, voucher or session ids. The
worker's copy (`worker_view`) never carries the authorization id.
"""

from __future__ import annotations

import base64
import secrets

from common import sealing
from common.errors import not_found
from common.vouchers import Signer

from ..store.base import Record, Tx
from . import budgets, journal, labels, ledger, pages
from .access import Principal
from .config import CoreConfig
from .session import SETTLED
from .wallets import get_wallet_or_below

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
OUTWARD_FIELDS = ("receipt_id", "held", "charged", "released", "worker_payout",
                  "platform_fee", "period_start_ms", "period_end_ms")
# The itemised part; kept in the receipt record only when there is no key to seal it to.
ITEMISED_FIELDS = ("session_id", "worker_id", "model", "resource_class", "usage", "prices",
                   "outcome", "labels", "authorize_ms", "open_ms", "settle_ms", "worker_usage")
# Kept beside the seal, for the agent to check its charge: the prices and the worker's
# signed usage (counters and the session id only; no labels, model, worker or times).
CHARGE_CHECK_FIELDS = ("prices", "worker_usage")
# Session fields that exist only in the sealed receipt once it is sealed.
SEALED_SESSION_FIELDS = ("usage", "signed_usage", "model")


def period_of(ms: int, period_ms: int) -> tuple[int, int]:
    """The whole hour or day (UTC) that `ms` falls in."""
    start = ms - ms % period_ms
    return start, start + period_ms


def payment_model(usage: Record, prices: Record) -> str:
    """Which of the charge's parts were non-zero: GPU time, inference (calls and
    tokens), both, or neither."""
    time = usage["gpu_ms"] * prices["gpu_second_price"] > 0
    inference = (usage["input_tokens"] * prices["input_tokens_1k_price"]
                 + usage["output_tokens"] * prices["output_tokens_1k_price"]
                 + usage["calls"] * prices["call_price"]) > 0
    if time and inference:
        return "mixed"
    return "metered_time" if time else "per_inference" if inference else "none"


# -- owners' receipt keys ---------------------------------------------------------------


def register_key(tx: Tx, principal: Principal, public_key: bytes, now: int) -> Record:
    sealing.check_public_key(public_key)
    record = {"owner_id": principal.owner_id, "key_id": sealing.receipt_key_id(public_key),
              "public_key": base64.b64encode(public_key).decode(), "create_ms": now}
    tx.put("receipt_keys", principal.owner_id, record)
    journal.append(tx, "receipt_key_registered",
                   {"owner_id": principal.owner_id, "key_id": record["key_id"]}, now)
    return record


def get_key(tx: Tx, owner_id: str) -> Record:
    found = tx.get("receipt_keys", owner_id)
    if found is None:
        raise not_found("receipt_key", owner_id)
    return found


# -- settlement ---------------------------------------------------------------------------


def issue(tx: Tx, auth: Record, ses: Record, outcome: str, now: int, config: CoreConfig,
          signer: Signer, *, payout: int, fee: int) -> Record:
    """Build, sign, seal (when the owner has a key) and store the receipt of a settled
    session, with the indexes statements read. Returns the stored record."""
    receipt_id = "rcpt_" + secrets.token_hex(12)
    start, end = period_of(now, config.receipt_period_ms)
    charged = ses["charged"]
    model = payment_model(ses["usage"], ses["prices"])
    outward = {"type": "receipt", "receipt_id": receipt_id, "held": auth["amount"],
               "charged": charged, "released": auth["amount"] - charged,
               "worker_payout": payout, "platform_fee": fee,
               "period_start_ms": start, "period_end_ms": end}
    signed = sealing.sign_document(signer, outward)
    record = {**{k: outward[k] for k in OUTWARD_FIELDS},
              "authorization_id": auth["authorization_id"], "owner_id": auth["owner_id"],
              "wallet_id": auth["wallet_id"], "provider_id": ses["provider_id"],
              "payment_model": model, "key_id": signed["key_id"],
              "signed_payload": signed["payload"], "signature": signed["signature"],
              "sealed": "", "receipt_key_id": "", "mandate_hash": auth.get("mandate_hash", "")}
    itemised = {"type": "receipt.itemised", "receipt_id": receipt_id,
                "authorization_id": auth["authorization_id"], "wallet_id": auth["wallet_id"],
                "session_id": ses["session_id"], "worker_id": ses["worker_id"],
                "model": ses.get("model", ""), "resource_class": ses.get("resource_class", ""),
                "usage": ses["usage"], "prices": ses["prices"], "payment_model": model,
                "outcome": outcome, "labels": labels.of(tx, auth["authorization_id"]),
                "authorize_ms": auth["create_ms"], "open_ms": ses["open_ms"],
                "settle_ms": now,
                "worker_usage": ses.get("signed_usage") or {"payload": "", "signature": ""}}
    if record["mandate_hash"]:  # (also beside the seal: the mandate audit reads it)
        itemised["mandate_hash"] = record["mandate_hash"]
    if sealed_labels := labels.sealed_of(tx, auth["authorization_id"]):
        itemised["sealed_labels"] = sealed_labels  # (sealed at Authorize: labels.py)
    key = tx.get("receipt_keys", auth["owner_id"])
    if key is None:
        record.update({k: itemised[k] for k in ITEMISED_FIELDS})
    else:
        sealed = sealing.seal_document(base64.b64decode(key["public_key"]), signer, itemised)
        record.update(sealed=base64.b64encode(sealed).decode(), receipt_key_id=key["key_id"],
                      **{k: itemised[k] for k in CHARGE_CHECK_FIELDS})
        labels.forget(tx, auth["authorization_id"])
    tx.put("receipts", receipt_id, record)
    seq = ledger.next_seq(tx, "receipt_seq")
    tx.put("wallet_receipts", f"{auth['wallet_id']}/{seq:020d}", {"receipt_id": receipt_id})
    for level in budgets.chain(tx, auth["wallet_id"]):  # a sub-budget's roll up to its parents
        tx.put("wallet_receipts", f"{level['parent_wallet_id']}/{seq:020d}",
               {"receipt_id": receipt_id})
    tx.put("owner_receipts", f"{auth['owner_id']}/{start:016d}/{receipt_id}", {
        "wallet_id": auth["wallet_id"], "payment_model": model, "charged": charged,
        "released": record["released"]})
    tx.put("provider_receipts", f"{ses['provider_id']}/{start:016d}/{receipt_id}", {
        "charged": charged, "payout": payout, "fee": fee})
    return record


def settled_session(ses: Record, receipt: Record, outcome: str, now: int,
                    by_finish: bool) -> Record:
    """The session as kept after settlement: without usage, signed usage and model
    when they now live in a sealed receipt. `by_finish`: settled by its worker's finish,
    on that finish's usage (a repeat of it is answered the same way: settled.py)."""
    settled = {**ses, "state": SETTLED, "receipt_id": receipt["receipt_id"],
               "outcome": outcome, "settle_ms": now, "settled_by_finish": by_finish}
    if receipt["sealed"]:
        for name in SEALED_SESSION_FIELDS:
            settled.pop(name, None)
    return settled


def worker_view(receipt: Record, ses: Record, outcome: str, now: int) -> Record:
    """The receipt the worker gets: the outward part and what it knows already."""
    return {**{k: receipt[k] for k in (*OUTWARD_FIELDS, "key_id", "signed_payload",
                                       "signature")},
            "authorization_id": "", "sealed": "", "receipt_key_id": "",
            "session_id": ses["session_id"], "usage": ses["usage"], "prices": ses["prices"],
            "outcome": outcome, "settle_ms": now,
            "worker_usage": ses.get("signed_usage") or {"payload": "", "signature": ""}}


# -- reading --------------------------------------------------------------------------


def list_receipts(tx: Tx, principal: Principal, wallet_id: str, page_size: int,
                  page_token: str) -> Record:
    # A wallet's receipts include those of every sub-budget below it (issue()), and an
    # agent key may also list one of its descendants' on its own.
    wallet = get_wallet_or_below(tx, principal, wallet_id)
    found, token = pages.index_page(tx, "wallet_receipts", f"{wallet['wallet_id']}/",
                                    "receipts", "receipt_id", page_size, page_token,
                                    newest_first=True)
    return {"receipts": found, "next_page_token": token}
