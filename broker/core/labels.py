"""Job labels and what crosses to workers.

Agents may label an authorization (job names, purposes). Labels are metadata about
the owner's business, so they stay inside the broker: they are kept apart from the
authorization record (table `authorization_labels`, so neither the idempotency cache
nor the journal ever holds them), never put in a voucher, a worker message, a
statement or a log line, and at settlement they go into the sealed receipt; once the
owner has a receipt key, the sealed receipt is the only place left that holds them.

Workers get only an allow-list of technical fields: `for_worker` builds a voucher's
scope from it, whatever else an authorization record may carry.
"""

from __future__ import annotations

import re

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


def store(tx: Tx, authorization_id: str, labels: dict[str, str]) -> None:
    if labels:
        tx.put("authorization_labels", authorization_id, {"labels": labels})


def of(tx: Tx, authorization_id: str) -> dict[str, str]:
    found = tx.get("authorization_labels", authorization_id)
    return found["labels"] if found else {}


def forget(tx: Tx, authorization_id: str) -> None:
    tx.delete("authorization_labels", authorization_id)
