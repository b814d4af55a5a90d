"""API keys, principals and the role and tenant checks every RPC makes.

A key is "cbk_" + 43 base64url characters (32 random bytes). Only its SHA-256 is
stored; a 256-bit random secret needs no slow hash. Each key has one role and is
bound to an owner (tenant), and an agent key also to one wallet, a worker key to a
provider.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from common.errors import BrokerError, Code, denied, invalid, not_found

from ..store.base import Record, Tx, must_get
from . import validate

ROLES = ("admin", "owner", "agent", "worker", "auditor")
KEY_PREFIX = "cbk_"
# Refusals of a key that was presented (not a missing one): failed authentications.
KEY_REFUSALS = frozenset({"API_KEY_INVALID", "API_KEY_REVOKED"})


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    owner_id: str = ""
    wallet_id: str = ""
    provider_id: str = ""

    @property
    def idempotency_scope(self) -> str:
        # Retries must come from the same principal; ids of different callers never clash.
        return self.key_id


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_record(role: str, now: int, *, owner_id: str = "", wallet_id: str = "",
                   provider_id: str = "", description: str = "") -> tuple[Record, str]:
    """(record to store, secret to show once)."""
    if role not in ROLES:
        raise invalid("role", f"must be one of {', '.join(ROLES)}")
    secret = new_secret()
    record = {"key_id": "key_" + secrets.token_hex(8), "role": role, "owner_id": owner_id,
              "wallet_id": wallet_id, "provider_id": provider_id, "description": description,
              "secret_sha256": hash_secret(secret), "revoked": False, "create_ms": now}
    return record, secret


def store_key(tx: Tx, record: Record) -> None:
    tx.put("api_keys", record["key_id"], record)
    tx.put("api_key_hashes", record["secret_sha256"], {"key_id": record["key_id"]})
    if record["role"] == "agent":  # owners list their agents' keys (agent_keys.py)
        tx.put("owner_agent_keys", f"{record['owner_id']}/{record['key_id']}",
               {"key_id": record["key_id"]})


def authenticate(tx: Tx, secret: str | None) -> Principal:
    if not secret:
        raise BrokerError(Code.UNAUTHENTICATED, "API_KEY_MISSING",
                          "send 'authorization: Bearer <api key>' metadata")
    row = tx.get("api_key_hashes", hash_secret(secret))
    record = _check_usable(must_get(tx, "api_keys", row["key_id"]) if row else None)
    return Principal(key_id=record["key_id"], role=record["role"], owner_id=record["owner_id"],
                     wallet_id=record["wallet_id"], provider_id=record["provider_id"])


def require_active(tx: Tx, principal: Principal) -> None:
    """Fail as `authenticate` would now, for a principal it returned earlier in a long
    call (every metering message is checked). A key's secret, id and bindings never
    change, only `revoked`, so the key record alone decides."""
    _check_usable(tx.get("api_keys", principal.key_id))


def _check_usable(record: Record | None) -> Record:
    if record is None:
        raise BrokerError(Code.UNAUTHENTICATED, "API_KEY_INVALID", "the API key is not valid")
    if record["revoked"]:
        raise BrokerError(Code.UNAUTHENTICATED, "API_KEY_REVOKED", "the API key was revoked",
                          {"key_id": record["key_id"]})
    return record


def require_role(principal: Principal, *roles: str) -> None:
    if principal.role not in roles:
        raise denied(f"this call needs a key with role {' or '.join(roles)}, "
                     f"not {principal.role}", "ROLE_NOT_ALLOWED")


def resolve_wallet_id(principal: Principal, wallet_id: str) -> str:
    """The wallet a call is about: agents default to (and are limited to) their own."""
    if principal.role == "agent":
        if wallet_id and wallet_id != principal.wallet_id:
            # Same answer as a missing wallet: agents learn nothing about other wallets.
            raise BrokerError(Code.NOT_FOUND, "WALLET_NOT_FOUND",
                              f"wallet {wallet_id!r} not found", {"wallet": wallet_id})
        return principal.wallet_id
    if not wallet_id:
        raise invalid("wallet_id", "is required")
    return wallet_id


def can_see_owner(principal: Principal, owner_id: str) -> bool:
    """Owner-scoped read access. Global auditors and admins see every owner."""
    if principal.role == "admin" or (principal.role == "auditor" and not principal.owner_id):
        return True
    return principal.owner_id == owner_id


def listed_owner(principal: Principal, owner_id: str) -> str:
    """The owner a per-owner listing (wallets, plans, subscriptions, approvals) is about.
    Owners and auditors bound to an owner list their own (owner_id empty or theirs);
    admins and global auditors read every tenant, so they name the owner."""
    owner_id = validate.ident(owner_id, "owner_id", required=False) or principal.owner_id
    if not owner_id:
        raise invalid("owner_id", "is required for admin and global auditor keys")
    if not can_see_owner(principal, owner_id):
        raise not_found("owner", owner_id)  # no hint that another tenant exists
    return owner_id


def can_see_wallet_record(principal: Principal, record: Record) -> bool:
    """Read access to a record of one wallet (an authorization, a lease): an agent sees
    its own wallet's only, everyone else goes by the record's owner."""
    if principal.role == "agent":
        return record["wallet_id"] == principal.wallet_id
    return can_see_owner(principal, record["owner_id"])


def require_global_reader(principal: Principal, what: str) -> None:
    """Raw billing data (the journal, ledger-wide audits) is for admins and for auditors
    bound to no owner: it names every tenant's ids and amounts."""
    require_role(principal, "admin", "auditor")
    if principal.owner_id:
        raise denied(f"{what} needs an admin or a global auditor key", "ROLE_NOT_ALLOWED")
