"""Job labels and what crosses to workers.

Agents may label an authorization (job names, purposes). Labels are metadata about
the owner's business, so they stay inside the broker: they are kept apart from the
authorization record (table `authorization_labels`, so neither the idempotency cache
nor the journal ever holds them), never put in a voucher, a worker message, a
statement or a log line, and at settlement they go into the receipt's itemised part.

When the owner has a receipt key at Authorize, the labels are sealed to it at once and
stored only sealed: LMDB does not clear the pages it frees, so labels stored in clear
and deleted at settlement would stay readable in the data file. The broker cannot read
them back after that; the sealed receipt carries them (`sealed_labels`, opened with the
same key). Without a receipt key they are kept in clear (docs/privacy.md).

Workers get only an allow-list of technical fields: `for_worker` builds a voucher's
scope from it, whatever else an authorization record may carry.
"""

from __future__ import annotations

import base64
import re

from common import sealing
from common.errors import invalid

from ..store.base import Tx

MAX_LABELS = 16
MAX_VALUE = 256
KEY = re.compile(r"[a-z0-9_.-]{1,63}")

# The technical fields a voucher's scope may carry to a worker (worker_ids: the offers
# a best-offer voucher may be redeemed at, pricing).
WORKER_SCOPE_FIELDS = ("resource_class", "model", "max_prices", "worker_id", "cache_scope",
                       "worker_ids")


def check(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise invalid("labels", f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        # The key is not echoed: labels are never repeated back in errors or logs.
        if not KEY.fullmatch(key):
            raise invalid("labels", "keys must be 1 to 63 characters of [a-z0-9_.-]")
        if len(value) > MAX_VALUE or not value.isprintable():
            raise invalid("labels", f"values must be at most {MAX_VALUE} printable characters")
    return dict(sorted(labels.items()))


def for_worker(scope: dict) -> dict:
    """The part of a scope that may reach a worker."""
    return {name: scope[name] for name in WORKER_SCOPE_FIELDS if name in scope}


def store(tx: Tx, authorization_id: str, owner_id: str, labels: dict[str, str]) -> None:
    if not labels:
        return
    key = tx.get("receipt_keys", owner_id)
    if key is None:
        tx.put("authorization_labels", authorization_id, {"labels": labels})
        return
    sealed = sealing.seal_json(base64.b64decode(key["public_key"]), {"labels": labels})
    tx.put("authorization_labels", authorization_id, {
        "sealed": base64.b64encode(sealed).decode(), "receipt_key_id": key["key_id"]})


def of(tx: Tx, authorization_id: str) -> dict[str, str]:
    """The labels in clear ({} when there are none, or they are sealed)."""
    found = tx.get("authorization_labels", authorization_id)
    return found.get("labels", {}) if found else {}


def sealed_of(tx: Tx, authorization_id: str) -> str:
    """The labels sealed at Authorize (base64), or ""."""
    found = tx.get("authorization_labels", authorization_id)
    return found.get("sealed", "") if found else ""


def forget(tx: Tx, authorization_id: str) -> None:
    tx.delete("authorization_labels", authorization_id)
