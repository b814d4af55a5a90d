from broker.core import journal
from broker.store import MemoryStore


def build(n=5):
    store = MemoryStore()
    for i in range(n):
        store.submit_sync(lambda tx, i=i: journal.append(tx, "event", {"i": i}, 1000 + i))
    return store


def test_intact_chain_verifies():
    assert build().read(journal.verify_tx) == []


def test_any_altered_entry_is_detected():
    store = build()

    def tamper(tx):
        entry = tx.get("journal", f"{3:020d}")
        entry["data"]["i"] = 99
        tx.put("journal", f"{3:020d}", entry)
    store.submit_sync(tamper)
    problems = store.read(journal.verify_tx)
    assert problems and "entry 3" in problems[0]


def test_removed_entry_is_detected():
    store = build()
    store.submit_sync(lambda tx: tx.delete("journal", f"{2:020d}"))
    assert store.read(journal.verify_tx)


def test_truncated_tail_is_detected_by_the_head():
    store = build()
    store.submit_sync(lambda tx: tx.delete("journal", f"{5:020d}"))
    assert any("head" in p for p in store.read(journal.verify_tx))
