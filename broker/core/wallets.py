"""Escrowed micro-wallets: created by owners with a cap, funded from the treasury."""

from __future__ import annotations

import secrets

from common.errors import BrokerError, Code, invalid, not_found, precondition
from common.money import check_amount

from ..store.base import Record, Tx, must_get
from . import budgets, journal, ledger, pages, validate
from .access import Principal, can_see_owner, resolve_wallet_id
from .config import CoreConfig
from .tenancy import get_owner


def view(tx: Tx, wallet: Record) -> Record:
    """A wallet with its live balance, as returned to callers. A sub-budget has no money
    of its own: posted is its cap less what it spent, pending what it holds, available
    what it may still hold (budgets.py)."""
    level = budgets.get(tx, wallet["wallet_id"])
    if level is not None:
        return {**wallet, "balance": {"posted": level["cap"] - level["spent"],
                                      "pending": level["held"],
                                      "available": max(0, budgets.allowance(tx,
                                                                            wallet["wallet_id"]))}}
    return {**wallet, "balance": ledger.balance(ledger.get_account(tx, wallet["wallet_id"]))}


def create_wallet(tx: Tx, owner_id: str, display_name: str, cap: int, refill_target: int,
                  now: int, config: CoreConfig) -> Record:
    validate.name(display_name, "display_name")
    check_amount(cap, "cap")
    if cap > config.max_wallet_cap:
        raise invalid("cap", f"must be at most {config.max_wallet_cap}", "INVALID_AMOUNT")
    check_amount(refill_target, "refill_target", allow_zero=True)
    if refill_target > cap:
        raise invalid("refill_target", "must not exceed cap", "INVALID_AMOUNT")
    get_owner(tx, owner_id)
    wallet_id = "wal_" + secrets.token_hex(8)
    ledger.create_account(tx, ledger.new_account(wallet_id, "wallet", now, no_overdraft=True,
                                                 owner_id=owner_id, max_balance=cap))
    wallet = {"wallet_id": wallet_id, "owner_id": owner_id, "display_name": display_name,
              "cap": cap, "refill_target": refill_target, "frozen": False, "create_ms": now}
    tx.put("wallets", wallet_id, wallet)
    tx.put("owner_wallets", f"{owner_id}/{wallet_id}", {})
    journal.append(tx, "wallet_created", {"wallet_id": wallet_id, "owner_id": owner_id,
                                          "cap": cap, "refill_target": refill_target}, now)
    return view(tx, wallet)


def get_wallet(tx: Tx, principal: Principal, wallet_id: str) -> Record:
    """The wallet if the principal may see it; NOT_FOUND otherwise (no existence leak)."""
    wallet_id = validate.ident(resolve_wallet_id(principal, wallet_id), "wallet_id")
    wallet = tx.get("wallets", wallet_id)
    if wallet is None or not can_see_owner(principal, wallet["owner_id"]):
        raise not_found("wallet", wallet_id)
    return wallet


def get_wallet_or_below(tx: Tx, principal: Principal, wallet_id: str) -> Record:
    """As get_wallet, and for an agent key also a sub-budget anywhere below its own
    wallet (reads that roll up to a parent: receipts). A sibling's or any other wallet
    is NOT_FOUND, as if it did not exist."""
    if principal.role == "agent" and wallet_id and wallet_id != principal.wallet_id:
        wallet = tx.get("wallets", validate.ident(wallet_id, "wallet_id"))
        if wallet is None or not budgets.is_below(tx, wallet_id, principal.wallet_id):
            raise not_found("wallet", wallet_id)
        return wallet
    return get_wallet(tx, principal, wallet_id)


def list_wallets(tx: Tx, owner_id: str, page_size: int, page_token: str) -> Record:
    size = validate.page_size(page_size)
    after = pages.decode(page_token)
    if after and not after.startswith(f"{owner_id}/"):
        raise invalid("page_token", "belongs to another listing", "INVALID_PAGE_TOKEN")
    start = after + "\x00" if after else None
    rows = list(tx.scan("owner_wallets", prefix=f"{owner_id}/", start=start, limit=size + 1))
    wallets = [view(tx, must_get(tx, "wallets", key.split("/", 1)[1])) for key, _ in rows[:size]]
    token = pages.encode(rows[size - 1][0]) if len(rows) > size else ""
    return {"wallets": wallets, "next_page_token": token}


def fund_wallet(tx: Tx, owner_id: str, wallet_id: str, amount: int, now: int) -> Record:
    check_amount(amount, "amount")
    wallet = tx.get("wallets", validate.ident(wallet_id, "wallet_id"))
    if wallet is None or wallet["owner_id"] != owner_id:
        raise not_found("wallet", wallet_id)
    if budgets.get(tx, wallet_id) is not None:
        raise precondition("SUB_BUDGET_NOT_FUNDABLE", f"wallet {wallet_id} is a sub-budget: "
                           "it spends its root wallet's money; fund the root",
                           wallet=wallet_id)
    treasury_id = get_owner(tx, owner_id)["treasury_account_id"]
    tr = ledger.transfer(tx, treasury_id, wallet_id, amount, "wallet_funding", now)
    journal.append(tx, "wallet_funded", {"wallet_id": wallet_id, "amount": amount,
                                         "transfer_id": tr["transfer_id"]}, now)
    return {"transfer_id": tr["transfer_id"],
            "wallet_balance": ledger.balance(ledger.get_account(tx, wallet_id)),
            "treasury_balance": ledger.balance(ledger.get_account(tx, treasury_id))}


def set_frozen(tx: Tx, owner_id: str, wallet_id: str, frozen: bool, now: int) -> Record:
    wallet = tx.get("wallets", validate.ident(wallet_id, "wallet_id"))
    if wallet is None or wallet["owner_id"] != owner_id:
        raise not_found("wallet", wallet_id)
    if wallet["frozen"] != frozen:
        wallet["frozen"] = frozen
        tx.put("wallets", wallet_id, wallet)
        journal.append(tx, "wallet_frozen" if frozen else "wallet_unfrozen",
                       {"wallet_id": wallet_id}, now)
    return view(tx, wallet)


def refill(tx: Tx, wallet: Record, now: int, limit: int | None = None) -> int:
    """Top the wallet's posted balance back up to its refill target from the treasury,
    as far as the treasury allows, and at most `limit` (the refill rules in
    broker/core/refills.py). Returns the amount moved.

    Posted, not available: an open hold is still the wallet's money, not spent, so a
    refill replaces what was charged and never lifts the wallet above its target (once
    the hold is released)."""
    if not wallet["refill_target"] or wallet["frozen"] or limit == 0:
        return 0
    account = ledger.get_account(tx, wallet["wallet_id"])
    treasury = ledger.get_account(tx, get_owner(tx, wallet["owner_id"])["treasury_account_id"])
    bal = ledger.balance(account)
    amount = min(wallet["refill_target"] - bal["posted"], ledger.balance(treasury)["available"])
    if limit is not None:
        amount = min(amount, limit)
    if amount <= 0:
        return 0
    tr = ledger.transfer(tx, treasury["account_id"], wallet["wallet_id"], amount, "refill", now)
    journal.append(tx, "wallet_refilled", {"wallet_id": wallet["wallet_id"], "amount": amount,
                                           "transfer_id": tr["transfer_id"]}, now)
    return amount


def balance_of(tx: Tx, principal: Principal, wallet_id: str) -> Record:
    if principal.role == "owner" and not wallet_id:
        account_id = get_owner(tx, principal.owner_id)["treasury_account_id"]
    else:
        account_id = get_wallet(tx, principal, wallet_id)["wallet_id"]
    return {"account_id": account_id, "balance": ledger.balance(ledger.get_account(tx, account_id))}


def list_transfers(tx: Tx, principal: Principal, wallet_id: str, page_size: int,
                   page_token: str) -> Record:
    wallet = get_wallet(tx, principal, wallet_id)
    size = validate.page_size(page_size)
    before = pages.decode(page_token)
    try:
        before_seq = int(before) if before else None
    except ValueError:
        raise invalid("page_token", "is not a token this server issued",
                      "INVALID_PAGE_TOKEN") from None
    rows = ledger.account_transfers(tx, wallet["wallet_id"], before_seq=before_seq,
                                    limit=size + 1)
    token = pages.encode(str(rows[size - 1]["seq"])) if len(rows) > size else ""
    return {"transfers": rows[:size], "next_page_token": token}


def require_spendable(wallet: Record) -> None:
    if wallet["frozen"]:
        raise BrokerError(Code.FAILED_PRECONDITION, "WALLET_FROZEN",
                          f"wallet {wallet['wallet_id']} is frozen",
                          {"wallet": wallet["wallet_id"]})
