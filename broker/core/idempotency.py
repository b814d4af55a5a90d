"""AIP-155 request ids: a retry with the same id gets the first answer again.

The first successful answer is stored in the same atomic operation as the change
it describes, so "done" and "remembered" can never disagree. The same id with
different parameters is refused (REQUEST_ID_REUSED). Secrets in an answer (a new
API key) are not stored, so a replay returns the answer without them. Failed requests are not
remembered: they changed nothing, so a retry simply runs again.
"""

from __future__ import annotations

from collections.abc import Callable

from common.errors import BrokerError, Code, invalid

from ..store.base import Record, Tx, due

KEEP_MS = 48 * 3600 * 1000  # docs/design.md: at least 24 h.
# Secrets are never remembered: a replay answers without them (keys are stored hashed only).
UNREMEMBERED_FIELDS = ("api_key",)
MAX_REQUEST_ID = 64


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID or not request_id.isascii() or not request_id.isprintable():
        raise invalid("request_id", f"must be at most {MAX_REQUEST_ID} printable ASCII characters")


def run(tx: Tx, scope: str, request_id: str, fingerprint: str, now: int,
        op: Callable[[], Record]) -> Record:
    """Run `op` once per (scope, request_id); replays return the stored result."""
    if not request_id:
        return op()
    check_request_id(request_id)
    key = f"{scope}/{request_id}"
    seen = tx.get("idempotency", key)
    if seen is not None:
        if seen["fingerprint"] != fingerprint:
            raise BrokerError(Code.INVALID_ARGUMENT, "REQUEST_ID_REUSED",
                              "request_id was already used with different parameters",
                              {"request_id": request_id})
        return seen["result"]
    result = op()
    remembered = {k: v for k, v in result.items() if k not in UNREMEMBERED_FIELDS}
    tx.put("idempotency", key, {"fingerprint": fingerprint, "result": remembered,
                                "time_ms": now})
    tx.put("idempotency_expiry", f"{now:020d}/{key}", {})
    return result


def prune(tx: Tx, now: int, limit: int = 1000) -> int:
    stop = f"{now - KEEP_MS:020d}"
    rows = due(tx, "idempotency_expiry", stop, limit)
    for index_key, _ in rows:
        tx.delete("idempotency", index_key.split("/", 1)[1])
        tx.delete("idempotency_expiry", index_key)
    return len(rows)
