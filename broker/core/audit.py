"""Ledger invariants (DESIGN.md section 2), checked on any Tx: by tests after every
step, by the GetLedgerSummary RPC, and by an offline audit of a data directory."""

from __future__ import annotations

from collections import Counter

from ..store.base import Tx
from . import grants, journal, ledger
from .authorizations import SETTLED

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
    for auth_id, auth in tx.scan("authorizations"):
        if auth["charged"] > auth["amount"]:
            problems.append(f"authorization {auth_id} charged {auth['charged']} "
                            f"above its hold of {auth['amount']}")
        if auth["state"] == SETTLED:
            receipt = tx.get("receipts", auth["receipt_id"])
            if receipt is None or receipt["charged"] != auth["charged"]:
                problems.append(f"authorization {auth_id} has no matching receipt")
    for receipt_id, receipt in tx.scan("receipts"):
        if receipt["worker_payout"] + receipt["platform_fee"] != receipt["charged"]:
            problems.append(f"receipt {receipt_id}: payout + fee != charged")
        if receipt["charged"] + receipt["released"] != receipt["held"]:
            problems.append(f"receipt {receipt_id}: charged + released != held")
    return problems + journal.verify_tx(tx) + grants.check(tx)  # (subscription credits)
