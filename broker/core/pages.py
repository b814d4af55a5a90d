"""Opaque AIP-158 page tokens: base64url of the last key returned."""

from __future__ import annotations

import binascii

from common.errors import invalid
from common.vouchers import b64d, b64e

from ..store.base import Record, Tx, must_get
from . import validate


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


def index_page(tx: Tx, table: str, prefix: str, record_table: str, id_field: str,
               page_size: int, page_token: str, *,
               newest_first: bool = False) -> tuple[list[Record], str]:
    """One page of an index "<prefix><seq:020d>" -> {id_field: id}, as records, and the
    next page's token ("" on the last page)."""
    size = validate.page_size(page_size)
    after = decode(page_token)
    if after and not after.startswith(prefix):
        raise invalid("page_token", "belongs to another listing", "INVALID_PAGE_TOKEN")
    if newest_first:
        rows = list(tx.scan(table, prefix=prefix, stop=after or None, reverse=True,
                            limit=size + 1))
    else:
        rows = list(tx.scan(table, prefix=prefix, start=after + "\x00" if after else None,
                            limit=size + 1))
    found = [must_get(tx, record_table, row[id_field]) for _, row in rows[:size]]
    return found, encode(rows[size - 1][0]) if len(rows) > size else ""
