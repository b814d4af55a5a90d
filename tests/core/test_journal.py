import hashlib

from broker.core import journal
from broker.store import MemoryStore


def build(n=5, *, sealed=True):
    store = MemoryStore(sealer=journal.seal if sealed else None)
    for i in range(n):
        store.submit_sync(lambda tx, i=i: journal.append(tx, "event", {"i": i}, 1000 + i))
    return store


def test_intact_chain_verifies():
    assert build().read(journal.verify_tx) == []


def test_operations_write_unsealed_entries_and_the_sealer_chains_them_in_order():
    store = build(sealed=False)
    assert store.read(lambda tx: list(tx.scan("journal"))) == []
    assert store.read(journal.verify_tx) == []  # unsealed, each checked by its digest
    assert store.submit_sync(journal.seal) == 5
    entries = store.read(lambda tx: [e for _, e in tx.scan("journal")])
    assert [(e["seq"], e["data"]["i"]) for e in entries] == [(i + 1, i) for i in range(5)]
    assert store.read(lambda tx: list(tx.scan("journal_unsealed"))) == []
    assert store.read(journal.verify_tx) == []
    assert store.submit_sync(journal.seal) == 0


def test_any_altered_entry_is_detected():
    store = build()

    def tamper(tx):
        entry = tx.get("journal", f"{3:020d}")
        entry["data"]["i"] = 99
        tx.put("journal", f"{3:020d}", entry)
    store.submit_sync(tamper)
    problems = store.read(journal.verify_tx)
    assert problems and "entry 3" in problems[0]


def test_an_altered_unsealed_entry_is_detected():
    store = build(sealed=False)

    def tamper(tx):
        key, entry = list(tx.scan("journal_unsealed"))[2]
        entry["data"]["i"] = 99
        tx.put("journal_unsealed", key, entry)
    store.submit_sync(tamper)
    problems = store.read(journal.verify_tx)
    assert len(problems) == 1 and "unsealed journal entry" in problems[0]


def test_removed_entry_is_detected():
    store = build()
    store.submit_sync(lambda tx: tx.delete("journal", f"{2:020d}"))
    assert store.read(journal.verify_tx)


def test_truncated_tail_is_detected_by_the_head():
    store = build()
    store.submit_sync(lambda tx: tx.delete("journal", f"{5:020d}"))
    assert store.read(journal.verify_tx) == ["journal entry 5: missing (the chain has a gap)"]


def test_entries_chained_by_the_old_rule_still_verify_and_new_ones_follow_them():
    """A data directory from before the sealer: entries without a digest, each hashed
    over its seq and content; sealing continues the chain after them."""
    store = MemoryStore(sealer=journal.seal)

    def old_entries(tx):
        prev = journal.GENESIS
        for seq in (1, 2):
            data = {"i": seq}
            body = journal.canonical({"seq": seq, "time_ms": 5, "kind": "old", "data": data})
            digest = hashlib.sha256(prev.encode() + body).hexdigest()
            tx.put("journal", f"{seq:020d}", {"seq": seq, "time_ms": 5, "kind": "old",
                                             "data": data, "prev": prev, "hash": digest})
            prev = digest
        tx.put("meta", "journal_head", {"seq": 2, "hash": prev})
    store.submit_sync(old_entries)
    store.submit_sync(lambda tx: journal.append(tx, "new", {}, 6))
    assert store.read(journal.verify_tx) == []
    assert store.read(lambda tx: tx.get("meta", "journal_head"))["seq"] == 3

    def tamper(tx):
        entry = tx.get("journal", f"{1:020d}")
        entry["data"]["i"] = 7
        tx.put("journal", f"{1:020d}", entry)
    store.submit_sync(tamper)
    assert any("journal entry 1" in p for p in store.read(journal.verify_tx))
