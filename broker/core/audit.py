"""Ledger invariants (DESIGN.md section 2), checked on any Tx: by tests after every
step, by the GetLedgerSummary and Audit RPCs, by the daemon's periodic audit, and by
an offline audit of a data directory (`broker audit`). Each problem names exactly
what is wrong: the account, hold, receipt, counter or journal entry."""

from __future__ import annotations

from collections import Counter

from ..store.base import Record, Tx
from . import grants, journal, ledger, pages, spend, validate
from .authorizations import SETTLED, has_voucher

BALANCE_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


def accounts_now(tx: Tx) -> dict[str, Record]:
    """Every account with its balances now: platform accounts' rows plus the entries
    not yet rolled up (ledger.roll_up)."""
    accounts = dict(tx.scan("accounts"))
    for key, entry in tx.scan("account_entries"):
        account = accounts.get(key.rsplit("/", 1)[0])
        if account is not None:  # else reported by _entry_problems
            for name, delta in entry.items():
                account[name] = account.get(name, 0) + delta
    return accounts


def totals(tx: Tx) -> dict[str, int]:
    sums = dict.fromkeys(BALANCE_FIELDS, 0)
    accounts = accounts_now(tx)
    for account in accounts.values():
        for name in BALANCE_FIELDS:
            sums[name] += account[name]
    return {**sums, "account_count": len(accounts),
            "transfer_count": sum(1 for _ in tx.scan("transfers"))}


def _effect(tx: Tx, tr: Record, account_id: str) -> dict[str, int]:
    """What a transfer did to one of its accounts' balances (non-zero fields)."""
    side = "debits" if account_id == tr["debit_account_id"] else "credits"
    if tr["kind"] == ledger.POSTED:
        out = {f"{side}_posted": tr["amount"]}
    elif tr["kind"] == ledger.PENDING:
        out = {f"{side}_pending": tr["amount"]}
    else:
        pending = tx.get("transfers", tr["pending_id"]) or {"amount": 0}
        out = {f"{side}_pending": -pending["amount"], f"{side}_posted": tr["amount"]}
    return {name: delta for name, delta in out.items() if delta}


def _entry_problems(tx: Tx) -> list[str]:
    """Each platform-account entry is the effect of the transfer with its seq."""
    problems = []
    for key, entry in tx.scan("account_entries"):
        account_id = key.rsplit("/", 1)[0]
        if not ledger.is_platform(account_id) or tx.get("accounts", account_id) is None:
            problems.append(f"account entry {key}: not of a platform account")
            continue
        row = tx.get("account_transfers", key)
        tr = tx.get("transfers", row["transfer_id"]) if row else None
        if tr is None:
            problems.append(f"account entry {key}: no transfer of {account_id} has its seq")
        elif entry != _effect(tx, tr, account_id):
            problems.append(f"account entry {key}: says {entry}, transfer "
                            f"{tr['transfer_id']} says {_effect(tx, tr, account_id)}")
    return problems


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
    problems += replay_problems + _entry_problems(tx)
    accounts = accounts_now(tx)
    for account_id, account in accounts.items():
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
    escrow = accounts.get(ledger.ESCROW_ACCOUNT)
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


def check_journal(tx: Tx) -> list[str]:
    return journal.verify_tx(tx)


def list_journal(tx: Tx, page_size: int, page_token: str) -> Record:
    """Journal entries, oldest first (AIP-158 pages)."""
    size = validate.page_size(page_size)
    after = pages.decode(page_token)
    rows = list(tx.scan("journal", start=after + "\x00" if after else None, limit=size + 1))
    token = pages.encode(rows[size - 1][0]) if len(rows) > size else ""
    return {"entries": [entry for _, entry in rows[:size]], "next_page_token": token}
