"""Ledger invariants (docs/design.md, INV-1 to INV-11), checked on any Tx: by tests after every
step, by the GetLedgerSummary and Audit RPCs, by the daemon's periodic audit, and by
an offline audit of a data directory (`broker audit`). Each problem names exactly
what is wrong: the account, hold, receipt, counter or journal entry."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from ..store.base import Record, Tx
from . import budgets, grants, journal, ledger, pages, spend, validate
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


# One function per named invariant (docs/design.md); `check` runs them all.


def inv_balanced(tx: Tx) -> list[str]:
    """INV-1: sum of debits = sum of credits, pending and posted."""
    sums = totals(tx)
    return [f"sum of {d} != sum of {c}" for d, c in (("debits_pending", "credits_pending"),
                                                     ("debits_posted", "credits_posted"))
            if sums[d] != sums[c]]


def inv_balances_follow_transfers(tx: Tx) -> list[str]:
    """INV-2: every account's balances are what its immutable transfers add up to; and
    INV-3: every hold resolves at most once, captured + released = held."""
    rebuilt, problems = _replayed_balances(tx)
    for account_id, account in tx.scan("accounts"):
        replayed = rebuilt.get(account_id, Counter())
        problems += [f"account {account_id}: {name} is {account[name]}, "
                     f"transfers say {replayed[name]}"
                     for name in BALANCE_FIELDS if account[name] != replayed[name]]
    return problems


def inv_no_overdraft(tx: Tx) -> list[str]:
    """INV-4: no flagged account is overdrawn or above its cap, and escrow holds no posted
    funds outside an atomic settlement."""
    problems = []
    for account_id, account in tx.scan("accounts"):
        if account["no_overdraft"] and \
                account["debits_pending"] + account["debits_posted"] > account["credits_posted"]:
            problems.append(f"account {account_id} is overdrawn")
        if account["max_balance"] and ledger.balance(account)["posted"] > account["max_balance"]:
            problems.append(f"account {account_id} is above its cap")
    escrow = tx.get("accounts", ledger.ESCROW_ACCOUNT)
    if escrow and ledger.balance(escrow)["posted"] != 0:
        problems.append("escrow holds posted funds outside an atomic settlement")
    return problems


def inv_voucher_redeemed_once(tx: Tx) -> list[str]:
    """INV-5: every voucher is redeemed at most once, and none is live once its
    authorization has ended."""
    redemptions = Counter(s["voucher_id"] for _, s in tx.scan("sessions"))
    problems = [f"voucher {v} redeemed {n} times" for v, n in redemptions.items() if n > 1]
    for auth_id, auth in tx.scan("authorizations"):
        if not has_voucher(auth) and tx.get("vouchers", auth["voucher_id"]) is not None:
            problems.append(f"authorization {auth_id} is {auth['state']} but has a voucher")
    return problems


def inv_charge_within_authorization(tx: Tx) -> list[str]:
    """INV-6: an agent is never charged more than it authorized, and every settled
    authorization has the receipt of its charge."""
    problems = []
    for auth_id, auth in tx.scan("authorizations"):
        if auth["charged"] > auth["amount"]:
            problems.append(f"authorization {auth_id} charged {auth['charged']} "
                            f"above its hold of {auth['amount']}")
        if auth["state"] == SETTLED:
            receipt = tx.get("receipts", auth["receipt_id"])
            if receipt is None or receipt["charged"] != auth["charged"]:
                problems.append(f"authorization {auth_id} has no matching receipt")
    return problems


def inv_spend_counters(tx: Tx) -> list[str]:
    """INV-7: the spend counters (policies, velocity) are what the authorizations and
    leases add up to."""
    problems = []
    counted: Counter = Counter()
    for _, auth in tx.scan("authorizations"):
        for period, bucket in spend.buckets(auth["create_ms"]).items():
            counted[f"{auth['wallet_id']}/{period}/{bucket}"] += spend.contribution(auth)
    for _, lease in tx.scan("leases"):  # a lease counts its hold, then its charge
        for period, bucket in spend.buckets(lease["create_ms"]).items():
            counted[f"{lease['wallet_id']}/{period}/{bucket}"] += \
                lease["charged"] if lease["state"] == "settled" else lease["held"]
    for key, row in tx.scan("spend_totals"):
        if row["amount"] != counted.pop(key, 0):
            problems.append(f"spend counter {key} is {row['amount']}, the authorizations "
                            f"say {counted.get(key, 0) or 'less'}")
    return problems + [f"spend counter {key} is missing ({n} spent)"
                       for key, n in counted.items() if n]


def inv_receipts_add_up(tx: Tx) -> list[str]:
    """INV-8: on every receipt, payout + fee = charged and charged + released = held."""
    problems = []
    for receipt_id, receipt in tx.scan("receipts"):
        if receipt["worker_payout"] + receipt["platform_fee"] != receipt["charged"]:
            problems.append(f"receipt {receipt_id}: payout + fee != charged")
        if receipt["charged"] + receipt["released"] != receipt["held"]:
            problems.append(f"receipt {receipt_id}: charged + released != held")
    return problems


INVARIANTS = (inv_balanced, inv_balances_follow_transfers, inv_no_overdraft,
              inv_voucher_redeemed_once, inv_charge_within_authorization, inv_spend_counters,
              inv_receipts_add_up)


def check(tx: Tx) -> list[str]:
    """Every invariant violation found; empty when the ledger is consistent."""
    problems = [problem for invariant in INVARIANTS for problem in invariant(tx)]
    return problems + _refund_problems(tx) + check_journal(tx) + grants.check(tx) + \
        budgets.check(tx)


def _refund_problems(tx: Tx) -> list[str]:
    """INV-9: refunds add up (provider and fee shares) and never exceed their receipt."""
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
    """INV-10: the hash chain, entry by entry. Reads each entry on its own, so an entry whose
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
