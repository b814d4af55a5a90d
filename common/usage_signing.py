"""Signed usage reports: the worker signs each cumulative report with its own
Ed25519 key; the broker verifies and keeps the last one with the receipt, so a
dispute can be settled from what the worker itself attested."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .canonical import canonical
from .errors import BrokerError, Code
from .money import USAGE_FIELDS
from .records import Record


def payload(session_id: str, usage: Record, *, seq: int = 0, final: bool = False) -> bytes:
    """Canonical bytes of one report (seq) or of the final usage (final=True)."""
    values = tuple(map(usage.get, _SORTED_FIELDS, _ZEROS))
    if _plain(session_id) and type(seq) is int and set(map(type, values)) <= _INT:
        # The common case, written out: the same bytes as `canonical` (keys sorted,
        # integers as digits, a session id that needs no escaping), at a fraction of the
        # cost (one per report on the broker's event loop and again in its writer).
        head = b'{"final":true' if final else b'{"seq":%d' % seq
        return head + _USAGE_TEMPLATE % (session_id.encode(), *values)
    body: Record = {"session_id": session_id, "usage": {
        name: usage.get(name, 0) for name in USAGE_FIELDS}}
    if final:
        body["final"] = True
    else:
        body["seq"] = seq
    return canonical(body)


_SORTED_FIELDS = tuple(sorted(USAGE_FIELDS))
_ZEROS = (0,) * len(USAGE_FIELDS)
_INT = {int}
_USAGE_TEMPLATE = (b',"session_id":"%s","usage":{' + b",".join(
    b'"%s":%%d' % name.encode() for name in _SORTED_FIELDS) + b"}}")


def _plain(text: str) -> bool:
    """Printable ASCII without quotes or backslashes: JSON writes it as it is."""
    return type(text) is str and text.isascii() and text.isprintable() and \
        '"' not in text and "\\" not in text


def sign(key: SigningKey, message: bytes) -> bytes:
    return key.sign(message).signature


def check_public_key(raw: bytes) -> str:
    """A registrable usage key (hex), or "" when none is given."""
    if not raw:
        return ""
    if len(raw) != 32:
        raise BrokerError(Code.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                          "usage_public_key: must be a raw 32-byte Ed25519 key",
                          {"field": "usage_public_key"},
                          [("usage_public_key", "must be 32 bytes")])
    return raw.hex()


def verify(public_key_hex: str, message: bytes, signature: bytes) -> None:
    """Raise USAGE_SIGNATURE_INVALID unless `signature` is the worker's over `message`."""
    if not public_key_hex:
        return  # the worker registered no usage key: reports are unsigned
    try:
        _verify_key(public_key_hex).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise not_signed() from None


def not_signed() -> BrokerError:
    return BrokerError(Code.PERMISSION_DENIED, "USAGE_SIGNATURE_INVALID",
                       "the usage report is not signed by the worker's usage key")


@functools.lru_cache(maxsize=1024)
def _verify_key(public_key_hex: str) -> VerifyKey:
    # A worker's key checks every report of its sessions: parsed once, not per report.
    return VerifyKey(bytes.fromhex(public_key_hex))


@dataclass(frozen=True)
class Verified:
    """A report's payload and the key its signature was checked against, outside the
    single writer (order does not matter for it). The op skips the check when the
    session's key is still that key: the writer does only what needs ordering."""

    public_key_hex: str
    message: bytes


def verify_ahead(public_key_hex: str, message: bytes, signature: bytes) -> Verified | None:
    """Verified, or None when the signature does not check out (the op then refuses
    the report with the authoritative error)."""
    try:
        verify(public_key_hex, message, signature)
    except BrokerError:
        return None
    return Verified(public_key_hex, message)


# -- batches (MeterWorker) ---------------------------------------------------------------


def digest(message: bytes) -> str:
    """Hex sha256 of one report's payload, as a batch lists it."""
    return hashlib.sha256(message).hexdigest()


def batch_payload(digests: list[str]) -> bytes:
    """The bytes a worker signs once for a whole MeterWorker batch: the digests of its
    reports' payloads, in order, then those of the final payloads of its finishes that
    carry no signature of their own (docs/wire.md). A session's proof is then its own
    payload, these bytes and the signature, and reveals nothing of the batch's other
    sessions but their count."""
    return canonical({"reports": digests})


def verify_proof(public_key_hex: str, message: bytes, signature: bytes,
                 batch: bytes = b"") -> None:
    """Check a receipt's (or refund's) worker usage: `signature` over `message` itself,
    or, when `batch` is given (it came in a MeterWorker batch), over `batch`, which must
    list `message`'s digest. Raises USAGE_SIGNATURE_INVALID (also without a key)."""
    if not public_key_hex or (batch and not in_batch(message, batch)):
        raise not_signed()
    verify(public_key_hex, batch or message, signature)


def in_batch(message: bytes, batch: bytes) -> bool:
    """Whether `batch` (signed batch bytes) lists `message` (a report's payload)."""
    try:
        listed = json.loads(batch)["reports"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(listed, list) and digest(message) in listed
