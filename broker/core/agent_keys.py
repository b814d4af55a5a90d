"""Owners manage their agents' keys: create, list and revoke agent keys for their own
wallets, within their tenant only (admins keep AdminService for every role)."""

from __future__ import annotations

from common.errors import invalid, not_found

from ..store.base import Record, Tx, must_get
from . import pages, tenancy, validate
from .access import Principal


def create(tx: Tx, principal: Principal, wallet_id: str, description: str, now: int) -> Record:
    wallet = tx.get("wallets", validate.ident(wallet_id, "wallet_id"))
    if wallet is None or wallet["owner_id"] != principal.owner_id:
        raise not_found("wallet", wallet_id)
    return tenancy.create_api_key(tx, "agent", now, owner_id=principal.owner_id,
                                  wallet_id=wallet_id, description=description)


def _own_agent_key(tx: Tx, principal: Principal, key_id: str) -> Record:
    """An agent key of the owner's tenant; any other key is NOT_FOUND (no leak)."""
    record = tx.get("api_keys", validate.ident(key_id, "key_id"))
    if record is None or record["role"] != "agent" or record["owner_id"] != principal.owner_id:
        raise not_found("api_key", key_id)
    return record


def view(record: Record) -> Record:
    return {k: record[k] for k in ("key_id", "wallet_id", "description", "revoked",
                                   "create_ms")}


def list_keys(tx: Tx, principal: Principal, wallet_id: str, page_size: int,
              page_token: str) -> Record:
    if wallet_id:
        wallet = tx.get("wallets", validate.ident(wallet_id, "wallet_id"))
        if wallet is None or wallet["owner_id"] != principal.owner_id:
            raise not_found("wallet", wallet_id)
    size = validate.page_size(page_size)
    prefix = f"{principal.owner_id}/"
    after = pages.decode(page_token)
    if after and not after.startswith(prefix):
        raise invalid("page_token", "belongs to another listing", "INVALID_PAGE_TOKEN")
    keys: list[Record] = []
    last = ""
    # Filtering by wallet scans the owner's keys; an owner has few.
    for key, row in tx.scan("owner_agent_keys", prefix=prefix,
                            start=after + "\x00" if after else None):
        record = must_get(tx, "api_keys", row["key_id"])
        if wallet_id and record["wallet_id"] != wallet_id:
            continue
        if len(keys) == size:
            return {"keys": keys, "next_page_token": pages.encode(last)}
        keys.append(view(record))
        last = key
    return {"keys": keys, "next_page_token": ""}


def revoke(tx: Tx, principal: Principal, key_id: str, now: int) -> Record:
    _own_agent_key(tx, principal, key_id)
    tenancy.revoke_api_key(tx, key_id, now)
    return view(must_get(tx, "api_keys", key_id))
