"""Mandates: spending intents an owner signs offline with its own Ed25519 key.

A mandate says which wallet (and every sub-budget below it) or which agent key may
spend, the most per job and in total, the models, and until when. The owner registers
the public key with the broker (DelegationService.RegisterMandateKey) and keeps the
private key; an agent passes the signed mandate with Authorize, and the broker checks
it against the registered key and its limits (broker/core/mandates.py).

Format (ASCII, no padding):  m1.<key id>.<base64url payload>.<base64url signature>
The payload is the canonical JSON (common/canonical.py) of exactly

    {"agent", "exp", "iat", "mid", "models", "per_job", "total", "typ": "mandate",
     "wallet"}

and the signature covers the ASCII bytes "m1.<key id>.<payload b64>". A mandate's hash
is the hex SHA-256 of the payload bytes. docs/wire.md ("Mandates") specifies it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass, replace
from typing import Any

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from .canonical import canonical
from .errors import BrokerError, Code

VERSION = "m1"
TYPE = "mandate"
MAX_TOKEN_LENGTH = 4096
MAX_MODELS = 64
MAX_ID = 64
FIELDS = frozenset({"agent", "exp", "iat", "mid", "models", "per_job", "total", "typ", "wallet"})


def b64e(data: bytes) -> str:  # (as vouchers.py's; imported from there, the error docs
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # would list its reasons)


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key: bytes) -> str:
    return "mk_" + hashlib.sha256(public_key).hexdigest()[:24]


@dataclass(frozen=True)
class Mandate:
    key_id: str
    mandate_id: str
    wallet_id: str
    agent_key_id: str  # empty: any agent key of the wallet's tree
    per_job: int
    total: int
    models: tuple[str, ...]  # empty: any model
    issued_ms: int
    expire_ms: int
    mandate_hash: str = ""
    payload_b64: str = ""
    signature_b64: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"typ": TYPE, "mid": self.mandate_id, "wallet": self.wallet_id,
                "agent": self.agent_key_id, "per_job": self.per_job, "total": self.total,
                "models": sorted(self.models), "iat": self.issued_ms, "exp": self.expire_ms}

    @property
    def token(self) -> str:
        return f"{VERSION}.{self.key_id}.{self.payload_b64}.{self.signature_b64}"


def malformed(why: str) -> BrokerError:
    return BrokerError(Code.INVALID_ARGUMENT, "MANDATE_MALFORMED", f"mandate is malformed: {why}")


def _ident(value: Any, name: str, *, required: bool) -> str:
    if not isinstance(value, str) or len(value) > MAX_ID or not value.isascii() or \
            not value.isprintable() or (required and not value) or "/" in value:
        raise malformed(f"{name} is not an id")
    return value


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise malformed(f"{name} is not a positive integer")
    return value


def _from_json(raw: Any, kid: str) -> Mandate:
    if not isinstance(raw, dict) or set(raw) != FIELDS or raw["typ"] != TYPE:
        raise malformed(f"the payload must have exactly the fields {sorted(FIELDS)}")
    models = raw["models"]
    if not isinstance(models, list) or len(models) > MAX_MODELS or models != sorted(set(models)):
        raise malformed(f"models must be a sorted list of at most {MAX_MODELS} distinct ids")
    return Mandate(
        key_id=kid, mandate_id=_ident(raw["mid"], "mid", required=True),
        wallet_id=_ident(raw["wallet"], "wallet", required=True),
        agent_key_id=_ident(raw["agent"], "agent", required=False),
        per_job=_count(raw["per_job"], "per_job"), total=_count(raw["total"], "total"),
        models=tuple(_ident(m, "models[]", required=True) for m in models),
        issued_ms=_count(raw["iat"], "iat"), expire_ms=_count(raw["exp"], "exp"))


def sign(key: SigningKey, *, wallet_id: str, per_job: int, total: int, expire_ms: int,
         issued_ms: int, agent_key_id: str = "", models: list[str] | tuple[str, ...] = (),
         mandate_id: str = "") -> str:
    """A signed mandate (the owner's side, offline)."""
    kid = key_id(bytes(key.verify_key))
    mandate = _from_json({"typ": TYPE, "mid": mandate_id or "mdt_" + secrets.token_hex(12),
                          "wallet": wallet_id, "agent": agent_key_id, "per_job": per_job,
                          "total": total, "models": sorted(set(models)), "iat": issued_ms,
                          "exp": expire_ms}, kid)
    head = f"{VERSION}.{kid}.{b64e(canonical(mandate.to_json()))}"
    return f"{head}.{b64e(key.sign(head.encode()).signature)}"


def parse(token: str) -> Mandate:
    """The mandate's claims and hash, its format checked but not its signature."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH or \
            not token.isascii():
        raise malformed("empty, too long or not ASCII")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION:
        raise malformed(f"expected {VERSION}.<key id>.<payload>.<signature>")
    _, kid, payload_b64, signature_b64 = parts
    if not kid.startswith("mk_") or len(kid) != 27:
        raise malformed("the key id is not mk_ and 24 hex digits")
    try:
        payload = b64d(payload_b64)
        raw = json.loads(payload)
    except (binascii.Error, ValueError):
        raise malformed("the payload is not base64url JSON") from None
    mandate = _from_json(raw, kid)
    if b64e(payload) != payload_b64 or canonical(raw) != payload:
        raise malformed("the payload is not canonical JSON in canonical base64url")
    return replace(mandate, mandate_hash=hashlib.sha256(payload).hexdigest(),
                   payload_b64=payload_b64, signature_b64=signature_b64)


def verify(mandate: Mandate, public_key: bytes) -> None:
    """Raise MANDATE_SIGNATURE_INVALID unless `public_key` signed `mandate`."""
    try:
        signature = b64d(mandate.signature_b64)
        if b64e(signature) != mandate.signature_b64:
            raise ValueError("not canonical base64url")
        # (crypto_sign_open is VerifyKey.verify; a call of a method named `verify` would
        # make the error docs list the vouchers' reasons for Authorize.)
        crypto_sign_open(signature + f"{VERSION}.{mandate.key_id}.{mandate.payload_b64}"
                         .encode(), public_key)
    except (BadSignatureError, binascii.Error, ValueError, TypeError):
        raise BrokerError(Code.PERMISSION_DENIED, "MANDATE_SIGNATURE_INVALID",
                          "the mandate's signature does not verify with the key it names",
                          {"key_id": mandate.key_id}) from None
