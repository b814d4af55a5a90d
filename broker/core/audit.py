"""Ledger invariants (docs/design.md, INV-1 to INV-11), checked on any Tx: by tests after every
step, by the GetLedgerSummary and Audit RPCs, by the daemon's periodic audit, and by
an offline audit of a data directory (`broker audit`). Each problem names exactly
what is wrong: the account, hold, receipt, counter or journal entry."""

from __future__ import annotations

from collections import Counter

from ..store.base import Record, Tx
from . import budgets, grants, journal, ledger, mandates, pages, spend, validate
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
    problems += _entry_problems(tx)
    for account_id, account in accounts_now(tx).items():
        replayed = rebuilt.get(account_id, Counter())
        problems += [f"account {account_id}: {name} is {account[name]}, "
                     f"transfers say {replayed[name]}"
                     for name in BALANCE_FIELDS if account[name] != replayed[name]]
    return problems


def inv_no_overdraft(tx: Tx) -> list[str]:
    """INV-4: no flagged account is overdrawn or above its cap, and escrow holds no posted
    funds outside an atomic settlement."""
    problems = []
    accounts = accounts_now(tx)
    for account_id, account in accounts.items():
        if account["no_overdraft"] and \
                account["debits_pending"] + account["debits_posted"] > account["credits_posted"]:
            problems.append(f"account {account_id} is overdrawn")
        if account["max_balance"] and ledger.balance(account)["posted"] > account["max_balance"]:
            problems.append(f"account {account_id} is above its cap")
    escrow = accounts.get(ledger.ESCROW_ACCOUNT)
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
        budgets.check(tx) + mandates.check_use(tx)


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


def check_journal(tx: Tx) -> list[str]:
    """INV-10: the hash chain, entry by entry (journal.verify_tx)."""
    return journal.verify_tx(tx)


def list_journal(tx: Tx, page_size: int, page_token: str) -> Record:
    """Journal entries, oldest first (AIP-158 pages)."""
    size = validate.page_size(page_size)
    after = pages.decode(page_token)
    rows = list(tx.scan("journal", start=after + "\x00" if after else None, limit=size + 1))
    token = pages.encode(rows[size - 1][0]) if len(rows) > size else ""
    return {"entries": [entry for _, entry in rows[:size]], "next_page_token": token}
