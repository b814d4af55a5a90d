"""Vouchers: versioned, signed, scoped, single-use spend tokens.

Format (ASCII, no padding):  v1.<key id>.<base64url claims JSON>.<base64url Ed25519 signature>
The signature covers the bytes "v1.<key id>.<claims b64>", so the version and key
id are authenticated too. Claims name no agent, wallet or owner:

    {"vid": voucher id, "amt": micro-credits, "scope": {...}, "iat": ms, "exp": ms}

Single use is enforced by the broker at redemption (see metering.redeem), not here.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, replace
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .canonical import canonical
from .errors import BrokerError, Code
from .money import prices_within

VERSION = "v1"
MAX_TOKEN_LENGTH = 4096


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Signer:
    """The broker's active Ed25519 key."""

    key_id: str
    signing_key: SigningKey

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature


@dataclass(frozen=True)
class VoucherClaims:
    voucher_id: str
    amount: int
    scope: dict[str, Any]
    issued_ms: int
    expire_ms: int
    key_id: str = ""
    # The key that may narrow the voucher offline (base64url Ed25519 public key, claim
    # "nk"); empty: it cannot be narrowed (common/narrowing.py).
    holder_key: str = ""
    # Set by `verify`: the original voucher's id, and (voucher id, amount) of the
    # original and of every derivation down to this one.
    family_id: str = ""
    chain: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        claims = {"vid": self.voucher_id, "amt": self.amount, "scope": compact(self.scope),
                  "iat": self.issued_ms, "exp": self.expire_ms}
        if self.holder_key:
            claims["nk"] = self.holder_key
        return claims


def compact(value: Any) -> Any:
    """Drop empty and zero entries: an absent scope field means "no restriction"."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items() if v and compact(v)}
    return value


def issue(signer: Signer, claims: VoucherClaims) -> str:
    head = f"{VERSION}.{signer.key_id}.{b64e(canonical(claims.to_json()))}"
    return f"{head}.{b64e(signer.sign(head.encode()))}"


def _malformed(why: str) -> BrokerError:
    return BrokerError(Code.INVALID_ARGUMENT, "VOUCHER_MALFORMED", f"voucher is malformed: {why}")


def verify(token: str, keys: dict[str, VerifyKey], now: int, *,
           check_expiry: bool = True) -> VoucherClaims:
    """Check format, key, signature and (unless told not to) expiry; return the claims.
    A derived voucher's chain is checked too (common/narrowing.py): the claims are then
    its last block's. Never echoes the token."""
    if not isinstance(token, str) or not token:
        raise _malformed("empty")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise _malformed("too long or not ASCII")
    root, _, rest = token.partition("~")
    claims = _verify_root(root, keys)
    if rest:
        from . import narrowing  # (narrowing builds on this module)

        return narrowing.apply_chain(claims, root.rsplit(".", 1)[1], rest.split("~"),
                                     now if check_expiry else None)
    if check_expiry and now >= claims.expire_ms:
        raise BrokerError(Code.FAILED_PRECONDITION, "VOUCHER_EXPIRED", "voucher has expired",
                          {"voucher_id": claims.voucher_id})
    return claims


def _verify_root(token: str, keys: dict[str, VerifyKey]) -> VoucherClaims:
    parts = token.split(".")
    if len(parts) != 4:
        raise _malformed("expected 4 dot-separated parts")
    version, key_id, claims_b64, sig_b64 = parts
    if version != VERSION:
        raise BrokerError(Code.INVALID_ARGUMENT, "VOUCHER_VERSION_UNSUPPORTED",
                          f"voucher version {version[:16]!r} is not supported")
    key = keys.get(key_id)
    if key is None:
        raise BrokerError(Code.PERMISSION_DENIED, "VOUCHER_UNKNOWN_KEY",
                          "voucher is signed with an unknown key", {"key_id": key_id[:64]})
    try:
        signature = b64d(sig_b64)
        if b64e(signature) != sig_b64:  # b64decode skips stray characters; we do not
            raise ValueError("signature is not canonical base64url")
        key.verify(f"{version}.{key_id}.{claims_b64}".encode(), signature)
    except (BadSignatureError, binascii.Error, ValueError):
        raise BrokerError(Code.PERMISSION_DENIED, "VOUCHER_INVALID_SIGNATURE",
                          "voucher signature does not verify") from None
    return _claims(claims_b64, key_id)


def _claims(claims_b64: str, key_id: str) -> VoucherClaims:
    try:
        raw = json.loads(b64d(claims_b64))
        claims = VoucherClaims(voucher_id=str(raw["vid"]), amount=int(raw["amt"]),
                               scope=dict(raw["scope"]), issued_ms=int(raw["iat"]),
                               expire_ms=int(raw["exp"]), key_id=key_id,
                               holder_key=str(raw.get("nk", "")))
    except (ValueError, KeyError, TypeError, binascii.Error):
        # Signed claims that do not parse: our own bug or a leaked key.
        raise _malformed("claims are not valid") from None
    return replace(claims, family_id=claims.voucher_id,
                   chain=((claims.voucher_id, claims.amount),))


def parse_unverified(token: str) -> VoucherClaims:
    """The claims of an original voucher without checking its signature: for its holder,
    who narrows it offline (a worker verifies it with `verify`)."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION:
        raise _malformed("expected v1.<key id>.<claims>.<signature>")
    return _claims(parts[2], parts[1])


def check_scope(scope: dict[str, Any], worker: dict[str, Any], resource_class: str,
                model: str) -> None:
    """Raise unless the voucher's scope covers this worker (its id, class, models, prices)
    and the job's resource class and model; the worker checks it offline, the broker again
    at redemption."""
    caps = worker["capabilities"]

    def outside(what: str, detail: str) -> BrokerError:
        return BrokerError(Code.PERMISSION_DENIED, "VOUCHER_SCOPE_MISMATCH",
                           f"the voucher does not cover this {what}: {detail}", {"scope": what})

    if scope.get("worker_id") and scope["worker_id"] != worker["worker_id"]:
        raise outside("worker", "it is pinned to another worker")
    if scope.get("worker_ids") and worker["worker_id"] not in scope["worker_ids"]:
        raise outside("worker", "it is valid at other workers only")
    wanted_class = scope.get("resource_class", "")
    for value in (resource_class, caps["resource_class"]):
        if wanted_class and value and value != wanted_class:
            raise outside("resource class", f"{value!r} is not {wanted_class!r}")
    wanted_model = scope.get("model", "")
    if wanted_model and model and model != wanted_model:
        raise outside("model", f"{model!r} is not {wanted_model!r}")
    if wanted_model and wanted_model not in caps["models"]:
        raise outside("model", f"the worker does not serve {wanted_model!r}")
    above = prices_within(worker["prices"], scope.get("max_prices", {}))
    if above:
        raise BrokerError(Code.PERMISSION_DENIED, "PRICE_ABOVE_SCOPE",
                          f"the worker's {', '.join(above)} exceeds the voucher's cap",
                          {"prices": ",".join(above)})
