"""Ledger invariants (docs/design.md, INV-1 to INV-12), checked on any Tx: by tests after every
step, by the GetLedgerSummary and Audit RPCs, by the daemon's periodic audit, and by
an offline audit of a data directory (`broker audit`). Each problem names exactly
what is wrong: the account, hold, receipt, counter or journal entry."""

from __future__ import annotations

import heapq
from collections import Counter
from itertools import groupby
from operator import itemgetter

from ..store.base import Record, Tx
from . import budgets, grants, journal, ledger, mandates, pages, spend, validate
from .authorizations import SETTLED, has_voucher
from .receipts import DAY_MS, HOUR_MS

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
    """Account balances rebuilt from the transfers alone, streamed: its memory is one
    Counter per account, whatever the number of transfers."""
    problems: list[str] = []
    rebuilt: dict[str, Counter] = {}
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
            pending = tx.get("transfers", tr["pending_id"])
            if pending is None:
                problems.append(f"transfer {tr['transfer_id']} resolves a missing hold")
                continue
            problems += _second_resolution(tx, tr)
            if tr["amount"] + tr["released"] != pending["amount"]:
                problems.append(f"hold {pending['transfer_id']}: captured + released "
                                f"!= held ({tr['amount']} + {tr['released']} "
                                f"!= {pending['amount']})")
            debit["debits_pending"] -= pending["amount"]
            credit["credits_pending"] -= pending["amount"]
            debit["debits_posted"] += tr["amount"]
            credit["credits_posted"] += tr["amount"]
    return rebuilt, problems


def _second_resolution(tx: Tx, tr: Record) -> list[str]:
    """A hold resolves at most once: its state names the one transfer that resolved it
    (ledger.resolve writes both in one step), so any other resolution of it is a second
    one. Checked per transfer instead of counting resolutions per hold, so that the
    audit's memory does not grow with the number of holds."""
    pending_id, transfer_id = tr["pending_id"], tr["transfer_id"]
    state = tx.get("hold_states", pending_id)
    named = state.get("resolved_by", "") if state is not None else ""
    if named == transfer_id:
        return []
    if named:
        return [f"hold {pending_id} resolved more than once: by transfer {named} and by "
                f"transfer {transfer_id}"]
    return [f"hold {pending_id}: transfer {transfer_id} resolves it, but its state says "
            f"{state['state'] if state is not None else 'nothing (no hold state)'}"]


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
    authorization has ended. A voucher's record names the one session that redeemed it
    (metering.redeem writes both in one step), so a session it does not name is a second
    redemption: checked per session, in memory that does not grow with their number."""
    problems = []
    for session_id, ses in tx.scan("sessions"):
        voucher = tx.get("vouchers", ses["voucher_id"])
        if voucher is None:
            problems.append(f"session {session_id} redeemed voucher {ses['voucher_id']}, "
                            "which was never issued")
        elif voucher["session_id"] != session_id:
            problems.append(f"voucher {ses['voucher_id']} redeemed more than once: by session "
                            f"{voucher['session_id'] or '(none recorded)'} and by session "
                            f"{session_id}")
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
    leases add up to. Wallet by wallet (their authorizations through the wallet's index,
    whose every row must match one authorization and the other way round), so that the
    audit holds one wallet's buckets at a time, not every bucket of every wallet."""
    problems = _indexed_authorization_problems(tx)
    leased = _lease_spend(tx)
    rows = heapq.merge(
        ((_group(key), 0, key, row) for key, row in tx.scan("wallet_authorizations")),
        ((_group(key), 1, key, row) for key, row in tx.scan("spend_totals")),
        key=itemgetter(0))  # a wallet's authorizations before its counters
    for group, wallet_rows in groupby(rows, key=itemgetter(0)):
        wallet_id = group[:-1]
        counted = leased.pop(wallet_id, Counter())
        for _, table, key, row in wallet_rows:
            if table == 0:
                auth = tx.get("authorizations", row["authorization_id"])
                if auth is None or auth["wallet_id"] != wallet_id or \
                        key != f"{wallet_id}/{auth['seq']:020d}":
                    problems.append(f"authorization index row {key} names "
                                    f"{row['authorization_id']}, not an authorization of "
                                    "that wallet and seq")
                    continue
                for period, bucket in spend.buckets(auth["create_ms"]).items():
                    counted[f"{wallet_id}/{period}/{bucket}"] += spend.contribution(auth)
            elif row["amount"] != counted.get(key, 0):
                problems.append(f"spend counter {key} is {row['amount']}, the "
                                f"authorizations say {counted.get(key, 0)}")
            else:
                counted.pop(key, None)
        problems += _missing_counters(counted)
    for counted in leased.values():  # wallets with leases but no counter at all
        problems += _missing_counters(counted)
    return problems


def _group(key: str) -> str:
    """An index key's first part with its "/" ("<wallet_id>/"): a scan's keys come in
    the order of these (with the "/": "a-b/" sorts before "a/"), one group after another."""
    head, slash, _ = key.partition("/")
    return head + slash


def _missing_counters(counted: Counter) -> list[str]:
    return [f"spend counter {key} is missing ({n} spent)" for key, n in counted.items() if n]


def _indexed_authorization_problems(tx: Tx) -> list[str]:
    """Every authorization is in its wallet's index under its seq (the other half of the
    one-to-one match inv_spend_counters relies on)."""
    problems = []
    for auth_id, auth in tx.scan("authorizations"):
        row = tx.get("wallet_authorizations", f"{auth['wallet_id']}/{auth['seq']:020d}")
        if row is None or row["authorization_id"] != auth_id:
            problems.append(f"authorization {auth_id} is missing from its wallet's index")
    return problems


def _lease_spend(tx: Tx) -> dict[str, Counter]:
    """What leases count per wallet and bucket: a lease counts its hold, then its charge.
    Leases are few (each reserves a worker for a while), and this is one entry per
    wallet with leases and bucket (at most the spend_totals rows)."""
    counted: dict[str, Counter] = {}
    for _, lease in tx.scan("leases"):
        wallet = counted.setdefault(lease["wallet_id"], Counter())
        for period, bucket in spend.buckets(lease["create_ms"]).items():
            wallet[f"{lease['wallet_id']}/{period}/{bucket}"] += \
                lease["charged"] if lease["state"] == "settled" else lease["held"]
    return counted


def inv_receipts_add_up(tx: Tx) -> list[str]:
    """INV-8: on every receipt, payout + fee = charged and charged + released = held."""
    problems = []
    for receipt_id, receipt in tx.scan("receipts"):
        if receipt["worker_payout"] + receipt["platform_fee"] != receipt["charged"]:
            problems.append(f"receipt {receipt_id}: payout + fee != charged")
        if receipt["charged"] + receipt["released"] != receipt["held"]:
            problems.append(f"receipt {receipt_id}: charged + released != held")
    return problems


def inv_refunds_on_statements(tx: Tx) -> list[str]:
    """INV-12: every refund is in the owner_refunds and provider_refunds indexes that
    statements read exactly once, under its receipt's owner and provider and the period
    (an hour or a day: receipt_period_ms) it was made in, with its amounts; and every
    row of them is such a refund's. One refund at a time, then one row at a time."""
    problems = []
    for refund_id, refund in tx.scan("refunds"):
        receipt = tx.get("receipts", refund["receipt_id"])
        if receipt is None:
            continue  # INV-9 reports it
        for table, expected in _refund_rows(refund, receipt).items():
            found = [row for key in expected if (row := tx.get(table, key)) is not None]
            if len(found) != 1:
                problems.append(f"refund {refund_id} is in {table} {len(found)} times")
            elif found[0] != _refund_row(table, refund, receipt):
                problems.append(f"refund {refund_id}: its {table} row has other amounts")
    for table in ("owner_refunds", "provider_refunds"):
        for key, _ in tx.scan(table):
            named = tx.get("refunds", key.rpartition("/")[2])
            of = tx.get("receipts", named["receipt_id"]) if named else None
            if not named or not of or key not in _refund_rows(named, of)[table]:
                problems.append(f"{table} row {key} names no refund made then")
    return problems


def _refund_rows(refund: Record, receipt: Record) -> dict[str, set[str]]:
    """The keys a refund's index rows may have: one per period a broker may use."""
    at = refund["refund_ms"]
    periods = {at - at % HOUR_MS, at - at % DAY_MS}
    return {"owner_refunds": {f"{receipt['owner_id']}/{p:016d}/{refund['refund_id']}"
                              for p in periods},
            "provider_refunds": {f"{receipt['provider_id']}/{p:016d}/{refund['refund_id']}"
                                 for p in periods}}


def _refund_row(table: str, refund: Record, receipt: Record) -> Record:
    if table == "owner_refunds":
        return {"wallet_id": receipt["wallet_id"], "payment_model": receipt["payment_model"],
                "amount": refund["amount"]}
    return {"amount": refund["amount"], "payout": refund["provider_refund"],
            "fee": refund["fee_refund"]}


INVARIANTS = (inv_balanced, inv_balances_follow_transfers, inv_no_overdraft,
              inv_voucher_redeemed_once, inv_charge_within_authorization, inv_spend_counters,
              inv_receipts_add_up, inv_refunds_on_statements)


def check(tx: Tx) -> list[str]:
    """Every invariant violation found; empty when the ledger is consistent."""
    problems = [problem for invariant in INVARIANTS for problem in invariant(tx)]
    return problems + _refund_problems(tx) + check_journal(tx) + grants.check(tx) + \
        budgets.check(tx) + mandates.check_use(tx)


def _refund_problems(tx: Tx) -> list[str]:
    """INV-9: refunds add up (provider and fee shares) and never exceed their receipt.
    Receipt by receipt through the receipt_refunds index (each row matched one-to-one to
    a refund), so that the audit holds one receipt's sums at a time."""
    problems = []
    for refund_id, refund in tx.scan("refunds"):
        if refund["provider_refund"] + refund["fee_refund"] != refund["amount"]:
            problems.append(f"refund {refund_id}: provider + fee shares != amount")
        row = tx.get("receipt_refunds", f"{refund['receipt_id']}/{refund_id}")
        if row is None or row["amount"] != refund["amount"]:
            problems.append(f"refund {refund_id} is missing from its receipt's index")
    for group, rows in groupby(tx.scan("receipt_refunds"), key=lambda kv: _group(kv[0])):
        receipt_id, total = group[:-1], Counter[str]()
        for key, _ in rows:
            found = tx.get("refunds", key.partition("/")[2])
            if found is None or found["receipt_id"] != receipt_id:
                problems.append(f"refund index row {key} names no refund of that receipt")
                continue
            total.update(amount=found["amount"], provider=found["provider_refund"],
                         fee=found["fee_refund"])
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
