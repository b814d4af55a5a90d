"""Append-only, hash-chained journal of every state change.

An operation writes its entry unchained, in `journal_unsealed` under a time-ordered
unique id, with the digest of its content: no key that another operation writes (a
chain head every operation rewrote would make all of them take turns). One sealer
(`seal`, run by the store after commits, in commit order) moves the entries into
`journal` and chains them: entry n stores

    hash_n = sha256(hash_{n-1} || "<n>:" || digest_n),  digest = sha256(canonical content)

so changing, removing or reordering any sealed entry breaks every later hash, and an
unsealed entry that was altered no longer matches its digest. Entries written before
the sealer (without a digest) keep their original rule,
hash_n = sha256(hash_{n-1} || canonical JSON of (seq, time, kind, data)).

With a store of several writers, the sealer must take only entries below the oldest
transaction still running (ids are handed out before commit, so a later id can commit
first); the LMDB and memory stores have one writer, so everything committed is sealable.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from common.canonical import canonical

from ..store.base import Record, Tx

GENESIS = "0" * 64


# Any: the audit hashes entries as it finds them, tampered or not.
def content_digest(time_ms: Any, kind: Any, data: Any) -> str:
    return hashlib.sha256(canonical({"time_ms": time_ms, "kind": kind, "data": data})).hexdigest()


def entry_hash(prev_hash: str, seq: int, time_ms: Any, kind: Any, data: Any) -> str:
    """The chain hash of an entry sealed before digests (the old rule)."""
    body = canonical({"seq": seq, "time_ms": time_ms, "kind": kind, "data": data})
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def chain_hash(prev_hash: str, seq: int, digest: str) -> str:
    return hashlib.sha256(f"{prev_hash}{seq}:{digest}".encode()).hexdigest()


def append(tx: Tx, kind: str, data: dict[str, Any], now: int) -> Record:
    entry = {"time_ms": now, "kind": kind, "data": data,
             "digest": content_digest(now, kind, data)}
    tx.put("journal_unsealed", f"{tx.next_id():020d}", entry)
    return entry


def head(tx: Tx) -> Record:
    return tx.get("meta", "journal_head") or {"seq": 0, "hash": GENESIS}


def seal(tx: Tx, limit: int = 100_000) -> int:
    """Chain the unsealed entries, oldest first, after the head; how many."""
    current = head(tx)
    seq, prev = current["seq"], current["hash"]
    for key, entry in tx.scan("journal_unsealed", limit=limit):
        seq += 1
        hashed = chain_hash(prev, seq, entry["digest"])
        tx.put("journal", f"{seq:020d}", {
            "seq": seq, "time_ms": entry["time_ms"], "kind": entry["kind"],
            "data": entry["data"], "digest": entry["digest"], "prev": prev, "hash": hashed})
        tx.delete("journal_unsealed", key)
        prev = hashed
    if seq != current["seq"]:
        tx.put("meta", "journal_head", {"seq": seq, "hash": prev})
    return seq - current["seq"]


def _when(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(ms)


def _content_problem(entry: Record) -> bool:
    """Whether a (sealed or unsealed) entry's content no longer matches its digest."""
    try:
        return entry.get("digest") != content_digest(entry.get("time_ms"), entry.get("kind"),
                                                     entry.get("data"))
    except (TypeError, ValueError):
        return True


def _hash_of(entry: Record, prev: str, seq: int) -> str:
    try:
        if "digest" in entry:
            return chain_hash(prev, seq, str(entry["digest"]))
        return entry_hash(prev, seq, entry.get("time_ms"), entry.get("kind"), entry.get("data"))
    except (TypeError, ValueError):
        return ""


def verify_tx(tx: Tx) -> list[str]:
    """The chain, entry by entry, then the unsealed entries: problems found, each naming
    the entry; empty when intact. Reads each entry on its own, so an entry whose stored
    bytes no longer decode is reported (and the rest still checked)."""
    problems = []
    current = head(tx)
    prev: str | None = GENESIS
    for seq in range(1, current["seq"] + 1):
        try:
            entry = tx.get("journal", f"{seq:020d}")
        except ValueError:
            problems.append(f"journal entry {seq}: its stored bytes are not valid JSON "
                            "(altered or corrupted on disk)")
            prev = None
            continue
        if entry is None:
            problems.append(f"journal entry {seq}: missing (the chain has a gap)")
            prev = None
            continue
        what = f"journal entry {seq} ({entry.get('kind')!s:.40}, {_when(entry.get('time_ms'))})"
        if entry.get("seq") != seq:
            problems.append(f"{what}: says it is entry {entry.get('seq')!s:.20} (moved)")
        if prev is not None and entry.get("prev") != prev:
            problems.append(f"{what}: its prev hash does not match entry {seq - 1} "
                            "(an entry before it was replaced or removed)")
        if ("digest" in entry and _content_problem(entry)) or \
                _hash_of(entry, str(entry.get("prev")), seq) != entry.get("hash"):
            problems.append(f"{what}: its content does not match its hash "
                            "(altered after it was written)")
        prev = entry.get("hash")
    if current["seq"] and prev is not None and current["hash"] != prev:
        problems.append(f"journal head: its hash does not match entry {current['seq']}")
    try:
        extra = next(iter(tx.scan("journal", start=f"{current['seq'] + 1:020d}", limit=1)),
                     None)
    except ValueError:
        extra = ("?", {})
    if extra is not None:
        problems.append(f"journal: entries after its head (entry {current['seq']}); "
                        "appended outside the broker")
    return problems + _unsealed_problems(tx)


def _unsealed_problems(tx: Tx) -> list[str]:
    problems = []
    try:
        for key, entry in tx.scan("journal_unsealed"):
            if _content_problem(entry):
                problems.append(f"unsealed journal entry {key} ({entry.get('kind')!s:.40}, "
                                f"{_when(entry.get('time_ms'))}): its content does not "
                                "match its digest (altered after it was written)")
    except ValueError:
        problems.append("unsealed journal entries: stored bytes that are not valid JSON "
                        "(altered or corrupted on disk)")
    return problems
