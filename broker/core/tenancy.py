"""Owners (tenants) with treasuries, providers with payout accounts, API keys."""

from __future__ import annotations

import secrets

from common.errors import BrokerError, Code, invalid, not_found
from common.money import MAX_AMOUNT, check_amount

from ..store.base import Record, Tx
from . import access, journal, ledger, validate


def create_owner(tx: Tx, display_name: str, now: int) -> Record:
    validate.name(display_name, "display_name")
    owner_id = "own_" + secrets.token_hex(8)
    treasury = ledger.create_account(tx, ledger.new_account(
        "trs_" + owner_id[4:], "treasury", now, no_overdraft=True, owner_id=owner_id))
    owner = {"owner_id": owner_id, "display_name": display_name,
             "treasury_account_id": treasury["account_id"], "create_ms": now}
    tx.put("owners", owner_id, owner)
    journal.append(tx, "owner_created", {"owner_id": owner_id}, now)
    return owner


def get_owner(tx: Tx, owner_id: str) -> Record:
    owner = tx.get("owners", validate.ident(owner_id, "owner_id"))
    if owner is None:
        raise not_found("owner", owner_id)
    return owner


def create_provider(tx: Tx, display_name: str, now: int) -> Record:
    validate.name(display_name, "display_name")
    provider_id = "prv_" + secrets.token_hex(8)
    payout = ledger.create_account(tx, ledger.new_account(
        "pay_" + provider_id[4:], "payout", now, no_overdraft=True))
    provider = {"provider_id": provider_id, "display_name": display_name,
                "payout_account_id": payout["account_id"], "create_ms": now}
    tx.put("providers", provider_id, provider)
    journal.append(tx, "provider_created", {"provider_id": provider_id}, now)
    return provider


def get_provider(tx: Tx, provider_id: str) -> Record:
    provider = tx.get("providers", validate.ident(provider_id, "provider_id"))
    if provider is None:
        raise not_found("provider", provider_id)
    return provider


def credit_treasury(tx: Tx, owner_id: str, amount: int, now: int) -> Record:
    check_amount(amount, "amount")
    owner = get_owner(tx, owner_id)
    # All money enters here: bounding the total keeps every balance and every ledger sum
    # within int64 (the protos), where two credits of 2^62 would overflow them.
    supply = ledger.get_account(tx, ledger.FUNDING_ACCOUNT)["debits_posted"]
    if supply + amount > MAX_AMOUNT:
        raise invalid("amount", f"would take the money in the ledger above {MAX_AMOUNT} "
                      f"({supply} so far)", "INVALID_AMOUNT")
    tr = ledger.transfer(tx, ledger.FUNDING_ACCOUNT, owner["treasury_account_id"], amount,
                         "treasury_credit", now)
    journal.append(tx, "treasury_credited",
                   {"owner_id": owner_id, "amount": amount, "transfer_id": tr["transfer_id"]}, now)
    treasury = ledger.get_account(tx, owner["treasury_account_id"])
    return {"transfer_id": tr["transfer_id"], "treasury_balance": ledger.balance(treasury)}


def create_api_key(tx: Tx, role: str, now: int, *, owner_id: str = "", wallet_id: str = "",
                   provider_id: str = "", description: str = "") -> Record:
    """Returns the key record plus its one-time `api_key` secret."""
    validate.name(description, "description")
    if role in ("owner", "agent") or role == "auditor" and owner_id:
        get_owner(tx, owner_id)
    elif owner_id:
        raise invalid("owner_id", f"must be empty for a {role} key")
    if role == "agent":
        wallet = tx.get("wallets", validate.ident(wallet_id, "wallet_id"))
        if wallet is None or wallet["owner_id"] != owner_id:
            raise not_found("wallet", wallet_id)
    elif wallet_id:
        raise invalid("wallet_id", "is only for agent keys")
    if role == "worker":
        get_provider(tx, provider_id)
    elif provider_id:
        raise invalid("provider_id", "is only for worker keys")
    record, secret = access.new_key_record(role, now, owner_id=owner_id, wallet_id=wallet_id,
                                           provider_id=provider_id, description=description)
    access.store_key(tx, record)
    journal.append(tx, "api_key_created",
                   {"key_id": record["key_id"], "role": role, "owner_id": owner_id,
                    "wallet_id": wallet_id, "provider_id": provider_id}, now)
    return {"key_id": record["key_id"], "api_key": secret}


def revoke_api_key(tx: Tx, key_id: str, now: int) -> Record:
    record = tx.get("api_keys", validate.ident(key_id, "key_id"))
    if record is None:
        raise not_found("api_key", key_id)
    if record["revoked"]:
        raise BrokerError(Code.FAILED_PRECONDITION, "API_KEY_REVOKED",
                          f"key {key_id} is already revoked", {"key_id": key_id})
    record["revoked"] = True
    tx.put("api_keys", key_id, record)
    journal.append(tx, "api_key_revoked", {"key_id": key_id}, now)
    return {"key_id": key_id}
