"""Append-only, hash-chained journal of every state change.

Entry n stores hash_n = sha256(hash_{n-1} || canonical JSON of (seq, time, kind, data)).
Changing, removing or reordering any entry breaks every later hash, so an audit
that recomputes the chain finds the first bad entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from common.canonical import canonical

from ..store.base import Record, Tx

GENESIS = "0" * 64


def entry_hash(prev_hash: str, seq: int, time_ms: Any, kind: Any, data: Any) -> str:
    # Any: the audit hashes entries as it finds them, tampered or not.
    body = canonical({"seq": seq, "time_ms": time_ms, "kind": kind, "data": data})
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def append(tx: Tx, kind: str, data: dict[str, Any], now: int) -> Record:
    head = tx.get("meta", "journal_head") or {"seq": 0, "hash": GENESIS}
    seq = head["seq"] + 1
    digest = entry_hash(head["hash"], seq, now, kind, data)
    entry = {"seq": seq, "time_ms": now, "kind": kind, "data": data, "prev": head["hash"],
             "hash": digest}
    tx.put("journal", f"{seq:020d}", entry)
    tx.put("meta", "journal_head", {"seq": seq, "hash": digest})
    return entry


def verify(entries: Iterable[Record], head: Record | None) -> list[str]:
    """Problems found in the chain; empty when intact."""
    problems: list[str] = []
    prev: Any = GENESIS  # then whatever the last entry says its hash is
    expected_seq = 1
    for entry in entries:
        seq = entry.get("seq")
        if seq != expected_seq:
            problems.append(f"journal entry {expected_seq}: found seq {seq} (gap or reorder)")
            return problems
        if entry.get("prev") != prev:
            problems.append(f"journal entry {seq}: prev hash does not match entry {seq - 1}")
        digest = entry_hash(prev, seq, entry.get("time_ms"), entry.get("kind"),
                            entry.get("data"))
        if digest != entry.get("hash"):
            problems.append(f"journal entry {seq}: hash mismatch (entry altered)")
        prev, expected_seq = entry.get("hash"), expected_seq + 1
    last = expected_seq - 1
    if head is not None and (head.get("seq") != last or head.get("hash") != prev):
        problems.append(f"journal head says seq {head.get('seq')}, chain ends at {last}")
    return problems


def verify_tx(tx: Tx) -> list[str]:
    return verify((entry for _, entry in tx.scan("journal")), tx.get("meta", "journal_head"))
