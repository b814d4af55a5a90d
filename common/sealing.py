"""Sealing to an owner's X25519 key, and broker-signed documents.

A sealed box (libsodium `crypto_box_seal`, PyNaCl `SealedBox`) encrypts to a public
key with a fresh ephemeral key pair: only the holder of the private key can open it,
and the broker itself cannot once it has sealed. A sealed box does not say who sealed
it, so what goes inside is a signed document: canonical JSON plus the broker's
Ed25519 signature and key id, checked by `open_document` when the verifying keys are
given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import VerifyKey

from .canonical import canonical
from .errors import invalid
from .vouchers import Signer

KEY_BYTES = 32


class SealError(Exception):
    """A sealed document that cannot be opened or verified. Never holds key material."""


def receipt_key_id(public_key: bytes) -> str:
    """Stable id of an owner's receipt key, derived from the key itself."""
    return "rk_" + hashlib.sha256(public_key).hexdigest()[:16]


def check_public_key(raw: bytes, field_path: str = "public_key") -> bytes:
    """A usable X25519 public key. Sealing to a low-order point fails inside libsodium,
    so a probe seal here keeps such a key from ever reaching settlement."""
    if len(raw) != KEY_BYTES:
        raise invalid(field_path, f"must be a raw {KEY_BYTES}-byte X25519 public key",
                      "RECEIPT_KEY_INVALID")
    try:
        SealedBox(PublicKey(raw)).encrypt(b"probe")
    except CryptoError:
        raise invalid(field_path, "is not a usable X25519 public key (low order)",
                      "RECEIPT_KEY_INVALID") from None
    return raw


def sign_document(signer: Signer, document: dict[str, Any]) -> dict[str, str]:
    """{"payload", "signature"} (base64) and the key id, for storing or sealing."""
    payload = canonical(document)
    return {"payload": base64.b64encode(payload).decode(), "key_id": signer.key_id,
            "signature": base64.b64encode(signer.sign(payload)).decode()}


def seal_json(public_key: bytes, value: Any) -> bytes:
    """`value` as canonical JSON in a sealed box (open with `open_sealed`). Unsigned: a
    sealed value goes inside a signed document before anyone is shown it."""
    return SealedBox(PublicKey(public_key)).encrypt(canonical(value))


def seal_document(public_key: bytes, signer: Signer, document: dict[str, Any]) -> bytes:
    """Sign `document`, then seal {"document", "key_id", "signature"} to the key."""
    signed = sign_document(signer, document)
    envelope = {"document": document, "key_id": signed["key_id"],
                "signature": signed["signature"]}
    return SealedBox(PublicKey(public_key)).encrypt(canonical(envelope))


def load_private_key(text: str) -> PrivateKey:
    """An owner's private receipt key as written by `broker receipts keygen` (hex)."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise SealError("the key file does not hold a hex X25519 private key") from None
    if len(raw) != KEY_BYTES:
        raise SealError(f"the key file must hold {KEY_BYTES} bytes in hex")
    return PrivateKey(raw)


def open_sealed(private_key: PrivateKey, sealed: bytes) -> Any:
    """The JSON inside a sealed box; SealError when this key does not open it."""
    if not sealed:
        raise SealError("nothing is sealed here (the owner had no receipt key)")
    try:
        plain = SealedBox(private_key).decrypt(sealed)
    except CryptoError:
        raise SealError("this key does not open it: it was sealed to another receipt key "
                        f"(this key's id is {receipt_key_id(bytes(private_key.public_key))})"
                        ) from None
    return json.loads(plain)


def open_document(private_key: PrivateKey, sealed: bytes,
                  verify_keys: dict[str, VerifyKey] | None = None) -> dict[str, Any]:
    """Open a sealed, signed document (an itemised receipt) and return the document.
    With `verify_keys` (the broker's receipt-signing keys) the signature must verify."""
    envelope = open_sealed(private_key, sealed)
    document = envelope["document"]
    if verify_keys is not None:
        key = verify_keys.get(envelope["key_id"])
        if key is None:
            raise SealError(f"signed by unknown broker key {envelope['key_id'][:64]!r}")
        try:
            key.verify(canonical(document), base64.b64decode(envelope["signature"]))
        except (BadSignatureError, binascii.Error, ValueError):
            raise SealError("the broker's signature on the itemised part does not verify"
                            ) from None
    return document
