"""Aggregated statements: per owner (totals per wallet and per payment model) and per
provider (payouts per period). No line items, and no timestamp finer than the
statement's granularity, an hour or a day, never finer than the broker's setting
(receipts record only the period they fell in). Refunds count in the period they were
made in (their index rows, too, keep only the period), whatever period the refunded
charge fell in: a statement shows what was charged and what was refunded in its period,
which is what moved in the ledger then. An owner's statement may carry an annex of line
items, sealed to the owner's receipt key. Statements are signed with the
receipt-signing key.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict

from common import sealing
from common.errors import denied, invalid, not_found, precondition
from common.vouchers import Signer

from ..store.base import Record, Tx, must_get
from . import budgets, validate
from .access import Principal, listed_owner
from .config import CoreConfig
from .receipts import DAY_MS, HOUR_MS, ITEMISED_FIELDS
from .tenancy import get_owner, get_provider

MAX_SPAN_MS = 366 * DAY_MS
# A wallet line's roll-up: its own totals plus its sub-budgets' (_rolled_up).
ROLLED = ("rollup_charged", "rollup_released", "rollup_job_count", "rollup_refunded")
WALLET_TOTALS = ("charged", "released", "job_count", "refunded")
PERIOD_TOTALS = ("charged", "payout", "platform_fee", "job_count", "refunded_payout",
                 "refunded_fee")
# Timestamps beyond year 9999 are not valid google.protobuf.Timestamps.
MAX_TIME_MS = 253_402_300_799_999


def bounds(start_ms: int, end_ms: int, granularity_ms: int,
           config: CoreConfig) -> tuple[int, int, int]:
    """(start, end, granularity): the request's period widened to whole periods of the
    granularity, which is never finer than the broker's receipt period."""
    if granularity_ms not in (0, HOUR_MS, DAY_MS):
        raise invalid("granularity", "must be HOUR or DAY")
    granularity = max(granularity_ms, config.receipt_period_ms)
    for name, value in (("period_start", start_ms), ("period_end", end_ms)):
        if not 0 <= value <= MAX_TIME_MS:
            raise invalid(name, "must be a time between 1970 and 9999")
    if end_ms <= start_ms:
        raise invalid("period_end", "must be after period_start")
    start = start_ms - start_ms % granularity
    end = -(-end_ms // granularity) * granularity
    if end - start > MAX_SPAN_MS:
        raise invalid("period_end", "the period may span at most 366 days")
    return start, end, granularity


def _signed(signer: Signer, document: Record) -> Record:
    signed = sealing.sign_document(signer, document)
    return {**document, "key_id": signed["key_id"], "signed_payload": signed["payload"],
            "signature": signed["signature"]}


def _owner_for(tx: Tx, principal: Principal, owner_id: str) -> str:
    return get_owner(tx, listed_owner(principal, owner_id))["owner_id"]


def owner_statement(tx: Tx, principal: Principal, owner_id: str, start_ms: int, end_ms: int,
                    granularity_ms: int, include_annex: bool, config: CoreConfig,
                    signer: Signer) -> Record:
    owner_id = _owner_for(tx, principal, owner_id)
    start, end, granularity = bounds(start_ms, end_ms, granularity_ms, config)
    key = tx.get("receipt_keys", owner_id)
    if include_annex and key is None:
        raise precondition("RECEIPT_KEY_NOT_REGISTERED",
                           "the annex is sealed to the owner's receipt key; register one "
                           "with RegisterReceiptKey first", owner_id=owner_id)
    wallets: dict[str, Record] = defaultdict(lambda: dict.fromkeys(WALLET_TOTALS, 0))
    models: dict[str, Record] = defaultdict(lambda: {"charged": 0, "job_count": 0,
                                                     "refunded": 0})
    items, refunds = [], []
    for index_key, row in tx.scan("owner_receipts", start=f"{owner_id}/{start:016d}",
                                  stop=f"{owner_id}/{end:016d}"):
        wallet, model = wallets[row["wallet_id"]], models[row["payment_model"]]
        wallet["charged"] += row["charged"]
        wallet["released"] += row["released"]
        wallet["job_count"] += 1
        model["charged"] += row["charged"]
        model["job_count"] += 1
        if include_annex:
            items.append(_line_item(tx, index_key.rsplit("/", 1)[1]))
    # A wallet refunded in the period gets a line even if it was charged nothing in it.
    for index_key, row in tx.scan("owner_refunds", start=f"{owner_id}/{start:016d}",
                                  stop=f"{owner_id}/{end:016d}"):
        wallets[row["wallet_id"]]["refunded"] += row["amount"]
        models[row["payment_model"]]["refunded"] += row["amount"]
        if include_annex:
            refunds.append(_refund_item(tx, index_key.rsplit("/", 1)[1]))
    statement = {
        "type": "statement", "owner_id": owner_id, "period_start_ms": start,
        "period_end_ms": end, "granularity_ms": granularity,
        "wallets": _rolled_up(tx, wallets),
        "payment_models": [{"payment_model": m, **t} for m, t in sorted(models.items())],
        "total_charged": sum(t["charged"] for t in wallets.values()),
        "total_released": sum(t["released"] for t in wallets.values()),
        "job_count": sum(t["job_count"] for t in wallets.values()),
        "total_refunded": sum(t["refunded"] for t in wallets.values()),
        "annex_sha256": "", "receipt_key_id": ""}
    annex = b""
    if include_annex:
        assert key is not None  # refused above
        annex = sealing.seal_document(base64.b64decode(key["public_key"]), signer, {
            "type": "statement.annex", "owner_id": owner_id, "period_start_ms": start,
            "period_end_ms": end, "items": items, "refunds": refunds})
        statement.update(annex_sha256=hashlib.sha256(annex).hexdigest(),
                         receipt_key_id=key["key_id"])
    return {**_signed(signer, statement), "annex": base64.b64encode(annex).decode()}


def _rolled_up(tx: Tx, wallets: dict[str, Record]) -> list[Record]:
    """The statement's wallet lines, each with its place in its delegation tree and its
    roll-up: its own totals plus those of every sub-budget below it (budgets.py), so a
    parent's line subtotals its subtree at every level. A parent whose subtree spent
    (or was refunded) in the period has a line even if it spent nothing itself. Sorted
    by wallet id."""
    rolled: dict[str, Record] = defaultdict(lambda: dict.fromkeys(ROLLED, 0))
    place: dict[str, tuple[str, int]] = {}  # wallet -> (parent wallet, depth)
    for wallet_id, totals in wallets.items():
        levels = budgets.chain(tx, wallet_id)  # nearest first; [] for a root wallet
        for level in levels:
            place[level["wallet_id"]] = (level["parent_wallet_id"], level["depth"])
        for at in [wallet_id, *(level["parent_wallet_id"] for level in levels)]:
            place.setdefault(at, ("", 0))  # (a root wallet)
            for name in ROLLED:
                rolled[at][name] += totals[name.removeprefix("rollup_")]
    nothing = dict.fromkeys(WALLET_TOTALS, 0)
    return [{"wallet_id": w, **wallets.get(w, nothing), "parent_wallet_id": place[w][0],
             "depth": place[w][1], **rolled[w]} for w in sorted(rolled)]


def _line_item(tx: Tx, receipt_id: str) -> Record:
    """One receipt for the sealed annex: its outward part, and its itemised part as
    the broker holds it (sealed, or in clear if settled before the owner had a key)."""
    r = must_get(tx, "receipts", receipt_id)
    item = {k: r[k] for k in ("receipt_id", "authorization_id", "wallet_id", "held",
                              "charged", "released", "period_start_ms", "period_end_ms",
                              "payment_model", "sealed", "receipt_key_id")}
    if not r["sealed"]:
        item["itemised"] = {k: r[k] for k in ITEMISED_FIELDS}
    return item


def _refund_item(tx: Tx, refund_id: str) -> Record:
    """One refund for the sealed annex: what it gave back, to which receipt, and why."""
    r = must_get(tx, "refunds", refund_id)
    return {k: r[k] for k in ("refund_id", "receipt_id", "wallet_id", "amount", "reason",
                              "dispute_id", "refund_ms")}


def payout_statement(tx: Tx, principal: Principal, provider_id: str, start_ms: int,
                     end_ms: int, granularity_ms: int, config: CoreConfig,
                     signer: Signer) -> Record:
    provider_id = validate.ident(provider_id, "provider_id", required=False)
    if principal.role == "worker":
        if provider_id and provider_id != principal.provider_id:
            raise not_found("provider", provider_id)
        provider_id = principal.provider_id
    elif principal.role == "auditor" and principal.owner_id:
        raise denied("an auditor bound to an owner cannot read providers' payouts",
                     "ROLE_NOT_ALLOWED")
    elif not provider_id:
        raise invalid("provider_id", "is required")
    provider_id = get_provider(tx, provider_id)["provider_id"]
    start, end, granularity = bounds(start_ms, end_ms, granularity_ms, config)
    periods: dict[int, Record] = defaultdict(lambda: dict.fromkeys(PERIOD_TOTALS, 0))

    def period_of(index_key: str) -> Record:
        at = int(index_key.split("/")[1])  # the index row's period, coarsened further
        return periods[at - at % granularity]

    for index_key, row in tx.scan("provider_receipts", start=f"{provider_id}/{start:016d}",
                                  stop=f"{provider_id}/{end:016d}"):
        period = period_of(index_key)
        period["charged"] += row["charged"]
        period["payout"] += row["payout"]
        period["platform_fee"] += row["fee"]
        period["job_count"] += 1
    # Refunds taken back from the provider's payout account and from the platform fees,
    # in the period they were made in (a period may have refunds and no jobs).
    for index_key, row in tx.scan("provider_refunds", start=f"{provider_id}/{start:016d}",
                                  stop=f"{provider_id}/{end:016d}"):
        period = period_of(index_key)
        period["refunded_payout"] += row["payout"]
        period["refunded_fee"] += row["fee"]
    rows = [{"period_start_ms": p, "period_end_ms": p + granularity, **t}
            for p, t in sorted(periods.items())]
    return _signed(signer, {
        "type": "payout_statement", "provider_id": provider_id, "period_start_ms": start,
        "period_end_ms": end, "granularity_ms": granularity, "periods": rows,
        "total_charged": sum(r["charged"] for r in rows),
        "total_payout": sum(r["payout"] for r in rows),
        "total_platform_fee": sum(r["platform_fee"] for r in rows),
        "job_count": sum(r["job_count"] for r in rows),
        "total_refunded_payout": sum(r["refunded_payout"] for r in rows),
        "total_refunded_fee": sum(r["refunded_fee"] for r in rows)})
