"""Vouchers narrowed offline, in the manner of Biscuit or macaroon attenuation.

A voucher authorized with a holder key names it in its claims (`"nk"`). Its holder
derives a narrower voucher without the broker: it appends a block (a smaller amount,
an earlier expiry, a narrower scope, a fresh voucher id, and the next holder's public
key) signed with the key the previous block named. Anyone can check the whole chain
offline with the broker's public keys alone; no block names an agent, wallet or owner.

    <root voucher>~<block b64url>.<signature b64url>~<block>.<signature>...

The signature of a block covers the ASCII bytes "v1d.<previous signature b64url>.<block
b64url>": it binds the block to the exact chain before it. docs/wire.md specifies it.
Single use across the family is the broker's check, at redemption
(broker/core/families.py).
"""

from __future__ import annotations

import binascii
import json
import secrets
from dataclasses import replace
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .canonical import canonical
from .errors import BrokerError, Code
from .money import PRICE_FIELDS
from .vouchers import VoucherClaims, b64d, b64e, compact, parse_unverified

SEPARATOR = "~"
DOMAIN = "v1d"
MAX_BLOCKS = 8
SCOPE_FIELDS = ("resource_class", "model", "worker_id", "worker_ids", "max_prices")


def _broken(why: str) -> BrokerError:
    return BrokerError(Code.PERMISSION_DENIED, "VOUCHER_CHAIN_BROKEN",
                       f"the voucher's derivation chain does not verify: {why}")


def _widened(what: str, why: str) -> BrokerError:
    return BrokerError(Code.PERMISSION_DENIED, "VOUCHER_WIDENED",
                       f"a derived voucher widens its parent: {what} {why}", {"field": what})


def public_key_text(key: SigningKey) -> str:
    return b64e(bytes(key.verify_key))


def narrower_scope(parent: dict[str, Any], child: dict[str, Any]) -> None:
    """Raise unless `child` restricts at least everything `parent` restricts."""
    for name in ("resource_class", "model"):
        if parent.get(name) and child.get(name) != parent[name]:
            raise _widened(f"scope.{name}", "differs from the parent's")
    if parent.get("worker_id") and child.get("worker_id") != parent["worker_id"]:
        raise _widened("scope.worker_id", "differs from the parent's")
    if parent.get("worker_ids"):
        named = set(child.get("worker_ids") or [])
        if child.get("worker_id"):
            named.add(child["worker_id"])
        if not named or not named <= set(parent["worker_ids"]):
            raise _widened("scope.worker_ids", "names a worker the parent does not")
    caps, ours = parent.get("max_prices") or {}, child.get("max_prices") or {}
    for name in PRICE_FIELDS:
        if caps.get(name) and not 0 < ours.get(name, 0) <= caps[name]:
            raise _widened(f"scope.max_prices.{name}", "is above the parent's cap")


def inherit(token: str, scope: dict[str, Any]) -> dict[str, Any]:
    """`scope` with what it leaves out taken from the voucher's (so it stays narrower)."""
    parent = verify_chain_offline(token).scope
    merged = {k: scope.get(k) or parent.get(k) for k in SCOPE_FIELDS if k != "max_prices"}
    merged["max_prices"] = {**(parent.get("max_prices") or {}),
                            **{k: v for k, v in (scope.get("max_prices") or {}).items() if v}}
    return merged


def derive(token: str, holder_key: SigningKey, *, amount: int, expire_ms: int,
           scope: dict[str, Any], next_public_key: str = "",
           voucher_id: str = "") -> str:
    """A narrower voucher from `token`, signed with `holder_key` (the key its last block
    names). `next_public_key` (base64url, 32 bytes) is the key that may narrow it again;
    empty: it cannot be narrowed further. Checks the result as a worker would (without
    the broker's keys: the root is checked by whoever verifies it)."""
    parent = verify_chain_offline(token)
    if not parent.holder_key:
        raise _broken("the voucher names no holder key: it cannot be narrowed")
    if b64e(bytes(holder_key.verify_key)) != parent.holder_key:
        raise _broken("the holder key is not the one the voucher names")
    block: dict[str, Any] = {"vid": voucher_id or "vch_" + secrets.token_hex(12),
                             "amt": amount, "exp": expire_ms,
                             "scope": compact({k: scope.get(k) for k in SCOPE_FIELDS})}
    if next_public_key:
        block["nk"] = next_public_key
    _check_block(parent, block)
    block_b64 = b64e(canonical(block))
    previous_signature = token.rsplit(".", 1)[1]
    message = f"{DOMAIN}.{previous_signature}.{block_b64}".encode()
    signature = holder_key.sign(message).signature
    return f"{token}{SEPARATOR}{block_b64}.{b64e(signature)}"


def _check_block(parent: VoucherClaims, block: dict[str, Any]) -> None:
    amount, expire_ms = block.get("amt"), block.get("exp")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise _broken("a block's amount is not a positive integer")
    if amount > parent.amount:
        raise _widened("amt", f"{amount} is above the parent's {parent.amount}")
    if not isinstance(expire_ms, int) or isinstance(expire_ms, bool):
        raise _broken("a block's expiry is not an integer")
    if expire_ms > parent.expire_ms:
        raise _widened("exp", "is after the parent's")
    vid = block.get("vid")
    if not isinstance(vid, str) or not vid.startswith("vch_") or len(vid) > 64 or \
            not vid.isascii() or "/" in vid:
        raise _broken("a block's voucher id is not valid")
    if vid in [v for v, _ in parent.chain] or vid == parent.voucher_id:
        raise _broken("a voucher id repeats in the chain")
    scope = block.get("scope")
    if not isinstance(scope, dict) or set(scope) - set(SCOPE_FIELDS):
        raise _broken("a block's scope is not valid")
    narrower_scope(parent.scope, scope)
    nk = block.get("nk", "")
    if not isinstance(nk, str) or (nk and len(_raw(nk)) != 32):
        raise _broken("a block's next key is not a 32-byte Ed25519 public key")
    if set(block) - {"vid", "amt", "exp", "scope", "nk"}:
        raise _broken("a block has unknown fields")


def _raw(text: str) -> bytes:
    try:
        raw = b64d(text)
    except (binascii.Error, ValueError):
        raise _broken("not base64url") from None
    if b64e(raw) != text:
        raise _broken("not canonical base64url")
    return raw


def apply_chain(root: VoucherClaims, root_signature: str, blocks: list[str],
                now: int | None) -> VoucherClaims:
    """The claims of the last block, after checking every block against the one before
    it: signed by the key that one names, and narrower in every respect."""
    if len(blocks) > MAX_BLOCKS:
        raise _broken(f"more than {MAX_BLOCKS} derivations")
    claims = replace(root, family_id=root.voucher_id, chain=((root.voucher_id, root.amount),))
    previous_signature = root_signature
    for part in blocks:
        pieces = part.split(".")
        if len(pieces) != 2:
            raise BrokerError(Code.INVALID_ARGUMENT, "VOUCHER_MALFORMED",
                              "voucher is malformed: a derivation block is not <block>.<sig>")
        block_b64, sig_b64 = pieces
        if not claims.holder_key:
            raise _broken("a block follows one that names no next key")
        try:
            VerifyKey(_raw(claims.holder_key)).verify(
                f"{DOMAIN}.{previous_signature}.{block_b64}".encode(), _raw(sig_b64))
        except (BadSignatureError, ValueError):
            raise _broken("a block is not signed by the key the previous one names") from None
        try:
            block = json.loads(_raw(block_b64))
        except ValueError:
            raise _broken("a block is not JSON") from None
        if not isinstance(block, dict):
            raise _broken("a block is not an object")
        _check_block(claims, block)
        scope = dict(block["scope"])
        if root.scope.get("cache_scope"):  # the broker's, carried unchanged
            scope["cache_scope"] = root.scope["cache_scope"]
        claims = replace(claims, voucher_id=block["vid"], amount=block["amt"],
                         expire_ms=block["exp"], scope=scope, holder_key=block.get("nk", ""),
                         chain=(*claims.chain, (block["vid"], block["amt"])))
        previous_signature = sig_b64
    if now is not None and now >= claims.expire_ms:
        raise BrokerError(Code.FAILED_PRECONDITION, "VOUCHER_EXPIRED", "voucher has expired",
                          {"voucher_id": claims.voucher_id})
    return claims


def verify_chain_offline(token: str) -> VoucherClaims:
    """The claims of a voucher's last block, checking the chain but not the root's
    signature (a holder narrowing it needs no broker key; a worker checks the root)."""
    root, _, rest = token.partition(SEPARATOR)
    claims = parse_unverified(root)
    blocks = rest.split(SEPARATOR) if rest else []
    return apply_chain(claims, root.rsplit(".", 1)[1], blocks, None)
