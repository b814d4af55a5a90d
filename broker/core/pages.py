"""Opaque AIP-158 page tokens: base64url of the last key returned."""

from __future__ import annotations

import binascii

from .errors import invalid
from .vouchers import b64d, b64e


def encode(last_key: str) -> str:
    return b64e(last_key.encode())


def decode(token: str) -> str:
    if not token:
        return ""
    try:
        key = b64d(token).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = None
    # b64decode skips characters outside the alphabet: only exact round trips are ours.
    if key is None or encode(key) != token:
        raise invalid("page_token", "is not a token this server issued",
                      "INVALID_PAGE_TOKEN") from None
    return key
