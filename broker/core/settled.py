"""A settled session answered again: the worker's copy of its settlement, rebuilt.

Why: the answer to a worker's finish can be lost after the settlement committed (the
broker killed, the connection cut, a COMMIT that went through as the connection
went). The worker then resumes the session, or sends its finish again, and must learn
that the job settled, with the receipt it would have got (docs/wire.md, "A finish
answered again"). Nothing here writes.

The rules:
- a resume of a settled session by its worker gets the settlement, however the
  session settled (its finish, the hold's expiry, the kill switch);
- a finish gets it only when it repeats the finish that settled the session: the
  session was settled by its worker's finish (`settled_by_finish`: not by a sweep,
  nor by a finish that came after the hold expired, which settles the acknowledged
  usage instead), the usage is the same (all five counters) and its signature checks
  as the first one's did. Any other finish stays SESSION_ALREADY_SETTLED.
"""

from __future__ import annotations

import base64
import json

from common.errors import BrokerError
from common.money import USAGE_FIELDS, check_usage

from ..store.base import Record, Tx
from . import receipts, session


def worker_copy(tx: Tx, ses: Record) -> Record | None:
    """The receipt the worker got (or would have got) when `ses` settled, field for
    field; None when it cannot be rebuilt: a session settled before the broker kept
    its outcome and time, or whose usage now lives only in a sealed receipt with no
    signed usage beside the seal (a worker without a usage key)."""
    receipt = tx.get("receipts", ses["receipt_id"]) if ses.get("receipt_id") else None
    if receipt is None or not ses.get("outcome") or not ses.get("settle_ms"):
        return None
    signed = ses.get("signed_usage") or receipt.get("worker_usage") or \
        {"payload": "", "signature": ""}
    usage = ses.get("usage") or _signed_usage(signed)
    if usage is None:
        return None
    return receipts.worker_view(receipt, {**ses, "usage": usage, "signed_usage": signed},
                                ses["outcome"], ses["settle_ms"])


def repeated_finish(tx: Tx, ses: Record, usage: Record) -> Record:
    """The settlement of settled session `ses` for a finish with `usage` that repeats
    the finish that settled it; else SESSION_ALREADY_SETTLED, as for any finish of a
    settled session. (The caller checks the finish's signature.)"""
    copy = worker_copy(tx, ses) if ses.get("settled_by_finish") else None
    if copy is None or _usage_or_none(usage) != copy["usage"]:
        session.require_open(ses)  # raises: it is settled
    assert copy is not None
    return copy


def _usage_or_none(usage: Record) -> Record | None:
    try:
        return check_usage(usage, "usage")
    except BrokerError:
        return None  # not a valid usage: not the one that settled


def _signed_usage(signed: Record) -> Record | None:
    """The usage counters of the worker's signed payload (a report's or a finish's)."""
    if not signed.get("payload"):
        return None
    try:
        body = json.loads(base64.b64decode(signed["payload"]))
        return {name: int(body["usage"][name]) for name in USAGE_FIELDS}
    except (ValueError, KeyError, TypeError):
        return None
