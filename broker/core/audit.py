"""Ledger invariants (DESIGN.md section 2), checked on any Tx: by tests after every
step, by the GetLedgerSummary and Audit RPCs, by the daemon's periodic audit, and by
an offline audit of a data directory (`broker audit`). Each problem names exactly
what is wrong: the account, hold, receipt, counter or journal entry."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from ..store.base import Record, Tx
from . import grants, journal, ledger, pages, spend, validate
from .authorizations import SETTLED, has_voucher

BALANCE_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


def totals(tx: Tx) -> dict[str, int]:
    sums = dict.fromkeys(BALANCE_FIELDS, 0)
    count = 0
    for _, account in tx.scan("accounts"):
        count += 1
        for name in BALANCE_FIELDS:
            sums[name] += account[name]
    return {**sums, "account_count": count}


def _replayed_balances(tx: Tx) -> tuple[dict[str, Counter], list[str]]:
    """Account balances rebuilt from the transfers alone."""
    problems: list[str] = []
    rebuilt: dict[str, Counter] = {}
    resolutions: Counter = Counter()
    for _, tr in tx.scan("transfers"):
        debit = rebuilt.setdefault(tr["debit_account_id"], Counter())
        credit = rebuilt.setdefault(tr["credit_account_id"], Counter())
        if tr["kind"] == ledger.POSTED:
            debit["debits_posted"] += tr["amount"]
            credit["credits_posted"] += tr["amount"]
        elif tr["kind"] == ledger.PENDING:
            debit["debits_pending"] += tr["amount"]
            credit["credits_pending"] += tr["amount"]
        else:
            resolutions[tr["pending_id"]] += 1
            pending = tx.get("transfers", tr["pending_id"])
            if pending is None:
                problems.append(f"transfer {tr['transfer_id']} resolves a missing hold")
                continue
            if tr["amount"] + tr["released"] != pending["amount"]:
                problems.append(f"hold {pending['transfer_id']}: captured + released "
                                f"!= held ({tr['amount']} + {tr['released']} "
                                f"!= {pending['amount']})")
            debit["debits_pending"] -= pending["amount"]
            credit["credits_pending"] -= pending["amount"]
            debit["debits_posted"] += tr["amount"]
            credit["credits_posted"] += tr["amount"]
    problems += [f"hold {pid} resolved {n} times" for pid, n in resolutions.items() if n > 1]
    return rebuilt, problems


def check(tx: Tx) -> list[str]:
    """Every invariant violation found; empty when the ledger is consistent."""
    problems: list[str] = []
    sums = totals(tx)
    if sums["debits_pending"] != sums["credits_pending"]:
        problems.append("sum of debits_pending != sum of credits_pending")
    if sums["debits_posted"] != sums["credits_posted"]:
        problems.append("sum of debits_posted != sum of credits_posted")

    rebuilt, replay_problems = _replayed_balances(tx)
    problems += replay_problems
    for account_id, account in tx.scan("accounts"):
        replayed = rebuilt.get(account_id, Counter())
        for name in BALANCE_FIELDS:
            if account[name] != replayed[name]:
                problems.append(f"account {account_id}: {name} is {account[name]}, "
                                f"transfers say {replayed[name]}")
        if account["no_overdraft"] and \
                account["debits_pending"] + account["debits_posted"] > account["credits_posted"]:
            problems.append(f"account {account_id} is overdrawn")
        if account["max_balance"] and ledger.balance(account)["posted"] > account["max_balance"]:
            problems.append(f"account {account_id} is above its cap")
    escrow = tx.get("accounts", ledger.ESCROW_ACCOUNT)
    if escrow and ledger.balance(escrow)["posted"] != 0:
        problems.append("escrow holds posted funds outside an atomic settlement")

    redemptions = Counter(s["voucher_id"] for _, s in tx.scan("sessions"))
    problems += [f"voucher {v} redeemed {n} times" for v, n in redemptions.items() if n > 1]
    counted: Counter = Counter()  # spend counters recomputed from the authorizations
    for auth_id, auth in tx.scan("authorizations"):
        if auth["charged"] > auth["amount"]:
            problems.append(f"authorization {auth_id} charged {auth['charged']} "
                            f"above its hold of {auth['amount']}")
        if auth["state"] == SETTLED:
            receipt = tx.get("receipts", auth["receipt_id"])
            if receipt is None or receipt["charged"] != auth["charged"]:
                problems.append(f"authorization {auth_id} has no matching receipt")
        if not has_voucher(auth) and tx.get("vouchers", auth["voucher_id"]) is not None:
            problems.append(f"authorization {auth_id} is {auth['state']} but has a voucher")
        for period, bucket in spend.buckets(auth["create_ms"]).items():
            counted[f"{auth['wallet_id']}/{period}/{bucket}"] += spend.contribution(auth)
    for _, lease in tx.scan("leases"):  # (pricing: a lease counts its hold, then its charge)
        for period, bucket in spend.buckets(lease["create_ms"]).items():
            counted[f"{lease['wallet_id']}/{period}/{bucket}"] += \
                lease["charged"] if lease["state"] == "settled" else lease["held"]
    for key, row in tx.scan("spend_totals"):
        if row["amount"] != counted.pop(key, 0):
            problems.append(f"spend counter {key} is {row['amount']}, the authorizations "
                            f"say {counted.get(key, 0) or 'less'}")
    problems += [f"spend counter {key} is missing ({n} spent)"
                 for key, n in counted.items() if n]
    for receipt_id, receipt in tx.scan("receipts"):
        if receipt["worker_payout"] + receipt["platform_fee"] != receipt["charged"]:
            problems.append(f"receipt {receipt_id}: payout + fee != charged")
        if receipt["charged"] + receipt["released"] != receipt["held"]:
            problems.append(f"receipt {receipt_id}: charged + released != held")
    return problems + _refund_problems(tx) + check_journal(tx) + grants.check(tx)


def _refund_problems(tx: Tx) -> list[str]:
    problems = []
    sums: dict[str, Counter] = {}
    for refund_id, refund in tx.scan("refunds"):
        if refund["provider_refund"] + refund["fee_refund"] != refund["amount"]:
            problems.append(f"refund {refund_id}: provider + fee shares != amount")
        total = sums.setdefault(refund["receipt_id"], Counter())
        total.update(amount=refund["amount"], provider=refund["provider_refund"],
                     fee=refund["fee_refund"])
    for receipt_id, total in sums.items():
        receipt = tx.get("receipts", receipt_id)
        if receipt is None:
            problems.append(f"refunds of missing receipt {receipt_id}")
        elif total["amount"] > receipt["charged"] or \
                total["provider"] > receipt["worker_payout"] or \
                total["fee"] > receipt["platform_fee"]:
            problems.append(f"receipt {receipt_id}: refunded {total['amount']} "
                            f"of {receipt['charged']} charged (more than was charged)")
    return problems


def _when(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(ms)


def check_journal(tx: Tx) -> list[str]:
    """The hash chain, entry by entry. Reads each entry on its own, so an entry whose
    stored bytes no longer decode is reported (and the rest still checked)."""
    problems = []
    head = tx.get("meta", "journal_head") or {"seq": 0, "hash": journal.GENESIS}
    prev: str | None = journal.GENESIS
    for seq in range(1, head["seq"] + 1):
        try:
            entry = tx.get("journal", f"{seq:020d}")
        except ValueError:
            problems.append(f"journal entry {seq}: its stored bytes are not valid JSON "
                            "(altered or corrupted on disk)")
            prev = None
            continue
        if entry is None:
            problems.append(f"journal entry {seq}: missing (the chain has a gap)")
            prev = None
            continue
        what = f"journal entry {seq} ({entry.get('kind')!s:.40}, {_when(entry.get('time_ms'))})"
        if entry.get("seq") != seq:
            problems.append(f"{what}: says it is entry {entry.get('seq')!s:.20} (moved)")
        if prev is not None and entry.get("prev") != prev:
            problems.append(f"{what}: its prev hash does not match entry {seq - 1} "
                            "(an entry before it was replaced or removed)")
        try:
            digest = journal.entry_hash(str(entry.get("prev")), seq, entry.get("time_ms"),
                                        entry.get("kind"), entry.get("data"))
        except (TypeError, ValueError):
            digest = ""
        if digest != entry.get("hash"):
            problems.append(f"{what}: its content does not match its hash "
                            "(altered after it was written)")
        prev = entry.get("hash")
    if head["seq"] and prev is not None and head["hash"] != prev:
        problems.append(f"journal head: its hash does not match entry {head['seq']}")
    try:
        extra = next(iter(tx.scan("journal", start=f"{head['seq'] + 1:020d}", limit=1)), None)
    except ValueError:
        extra = ("?", {})
    if extra is not None:
        problems.append(f"journal: entries after its head (entry {head['seq']}); "
                        "appended outside the broker")
    return problems


def list_journal(tx: Tx, page_size: int, page_token: str) -> Record:
    """Journal entries, oldest first (AIP-158 pages)."""
    size = validate.page_size(page_size)
    after = pages.decode(page_token)
    rows = list(tx.scan("journal", start=after + "\x00" if after else None, limit=size + 1))
    token = pages.encode(rows[size - 1][0]) if len(rows) > size else ""
    return {"entries": [entry for _, entry in rows[:size]], "next_page_token": token}
