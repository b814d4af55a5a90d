"""The audit streams the ledger (issue 22): a daemon audits every five minutes for
months, so what it holds while it walks the ledger must not grow with the number of
holds, sessions, authorizations or refunds. It checks "at most once" through the record
that names the one resolution or redemption (hold_states, vouchers) and sums spend and
refunds wallet by wallet and receipt by receipt through their indexes; these tests
alter one record at a time and check that each problem is still named."""

from __future__ import annotations

import tracemalloc

from broker.core import audit, authorizations, ledger, refunds
from broker.core.access import Principal
from broker.store import LmdbStore

from .test_kill_refill_refund import Setup


def settled() -> tuple[Setup, dict, dict]:
    """A session that ran and settled: (setup, its authorization, its receipt)."""
    s = Setup(cap=2_000_000)
    auth, ses = s.open(10_000)
    receipt = s.finish(ses, 4_000)
    assert s.w.violations() == []
    return s, s.w.read(lambda tx: tx.get("authorizations", auth["authorization_id"])), receipt


def test_a_hold_resolved_twice_is_named():
    s, auth, _ = settled()
    w = s.w
    state = w.read(lambda tx: tx.get("hold_states", auth["hold_id"]))
    first = w.read(lambda tx: tx.get("transfers", state["resolved_by"]))
    again = {**first, "transfer_id": "tr_again", "amount": 0, "released": 10_000}
    w.run(lambda tx: tx.put("transfers", "tr_again", again))
    problems = w.violations()
    assert f"hold {auth['hold_id']} resolved more than once: by transfer " \
        f"{first['transfer_id']} and by transfer tr_again" in problems
    # The hold's state naming no resolution at all is named too.
    w.run(lambda tx: tx.put("hold_states", auth["hold_id"], {**state, "resolved_by": ""}))
    assert sum(p.startswith(f"hold {auth['hold_id']}: transfer ") and
               p.endswith(f"resolves it, but its state says {state['state']}")
               for p in w.violations()) == 2


def test_a_voucher_redeemed_twice_is_named():
    s, auth, _ = settled()
    w = s.w
    ses = w.read(lambda tx: tx.get("sessions", auth["session_id"]))
    w.run(lambda tx: tx.put("sessions", "ses_again", {**ses, "session_id": "ses_again"}))
    assert f"voucher {auth['voucher_id']} redeemed more than once: by session " \
        f"{auth['session_id']} and by session ses_again" in w.violations()


def test_spend_counters_are_checked_wallet_by_wallet_through_the_index():
    s, auth, _ = settled()
    w = s.w
    other = w.run(lambda tx: authorizations.authorize(tx, s.agent, 700, {}, 60, w.now,
                                                      w.config, w.signer.key_id))
    assert w.violations() == []
    wallet_id = auth["wallet_id"]
    key = f"{wallet_id}/{other['seq']:020d}"
    w.run(lambda tx: tx.delete("wallet_authorizations", key))
    problems = w.violations()
    assert f"authorization {other['authorization_id']} is missing from its wallet's index" \
        in problems
    # Its 700 held are in the counters but no longer in what the index adds up to.
    assert any(p.startswith(f"spend counter {wallet_id}/day/") and
               p.endswith(f"is {4_000 + 700}, the authorizations say 4000") for p in problems)
    # An index row naming another wallet's (or no) authorization.
    w.run(lambda tx: tx.put("wallet_authorizations", key, {"authorization_id": "auth_nope"}))
    assert f"authorization index row {key} names auth_nope, not an authorization of that " \
        "wallet and seq" in w.violations()
    w.run(lambda tx: tx.put("wallet_authorizations", key,
                            {"authorization_id": other["authorization_id"]}))
    assert w.violations() == []
    # A counter altered, and one missing.
    day = next(k for k, _ in w.read(lambda tx: list(tx.scan("spend_totals", prefix=wallet_id))))
    w.run(lambda tx: tx.put("spend_totals", day, {"amount": 1}))
    assert f"spend counter {day} is 1, the authorizations say {4_700}" in w.violations()
    w.run(lambda tx: tx.delete("spend_totals", day))
    assert f"spend counter {day} is missing ({4_700} spent)" in w.violations()


def test_refunds_are_summed_receipt_by_receipt_through_the_index():
    s, _, receipt = settled()
    w = s.w
    admin = Principal("key_admin", "admin")
    refund = w.run(lambda tx: refunds.refund(tx, admin, receipt["receipt_id"], 3_000, "x",
                                             w.now, w.config, w.signer))
    assert w.violations() == []
    rid, index_key = refund["refund_id"], f"{receipt['receipt_id']}/{refund['refund_id']}"
    # A second refund of the same 3,000 slipped in: 6,000 of 4,000 charged.
    copy = {**w.read(lambda tx: tx.get("refunds", rid)), "refund_id": "rfd_again"}
    w.run(lambda tx: tx.put("refunds", "rfd_again", copy))
    assert "refund rfd_again is missing from its receipt's index" in w.violations()
    w.run(lambda tx: tx.put("receipt_refunds", f"{receipt['receipt_id']}/rfd_again",
                            {"amount": 3_000}))
    assert f"receipt {receipt['receipt_id']}: refunded 6000 of 4000 charged (more than was " \
        "charged)" in w.violations()
    w.run(lambda tx: tx.delete("refunds", "rfd_again"))
    assert f"refund index row {receipt['receipt_id']}/rfd_again names no refund of that " \
        "receipt" in w.violations()
    w.run(lambda tx: tx.delete("receipt_refunds", f"{receipt['receipt_id']}/rfd_again"))
    assert w.violations() == []
    w.run(lambda tx: tx.delete("receipt_refunds", index_key))
    assert f"refund {rid} is missing from its receipt's index" in w.violations()


def test_refunds_are_indexed_for_statements_one_to_one():
    """INV-12: statements read refunds through owner_refunds and provider_refunds; a
    refund missing from them, in them twice, with other amounts, or a row naming no
    refund would make a statement disagree with the money that moved."""
    s, _, receipt = settled()
    w = s.w
    admin = Principal("key_admin", "admin")
    refund = w.run(lambda tx: refunds.refund(tx, admin, receipt["receipt_id"], 3_000, "x",
                                             w.now, w.config, w.signer))
    rid = refund["refund_id"]
    owner_key, row = w.read(lambda tx: next(tx.scan("owner_refunds")))
    provider_key, _ = w.read(lambda tx: next(tx.scan("provider_refunds")))
    assert owner_key.endswith(f"/{rid}") and provider_key.endswith(f"/{rid}")
    stored = w.read(lambda tx: tx.get("receipts", receipt["receipt_id"]))
    assert row == {"wallet_id": refund["wallet_id"], "payment_model": stored["payment_model"],
                   "amount": 3_000}
    assert w.violations() == []
    # Missing from an index.
    w.run(lambda tx: tx.delete("owner_refunds", owner_key))
    assert w.violations() == [f"refund {rid} is in owner_refunds 0 times"]
    # Other amounts.
    w.run(lambda tx: tx.put("owner_refunds", owner_key, {**row, "amount": 2_999}))
    assert w.violations() == [f"refund {rid}: its owner_refunds row has other amounts"]
    w.run(lambda tx: tx.put("owner_refunds", owner_key, row))
    assert w.violations() == []
    # Twice: under the hour and under the day it was made in (counted twice by a day's
    # statement), or under another period altogether.
    owner_id, hour, _ = owner_key.split("/")
    day = int(hour) - int(hour) % 86_400_000
    twice = f"{owner_id}/{day + (0 if day != int(hour) else 3_600_000):016d}/{rid}"
    w.run(lambda tx: tx.put("owner_refunds", twice, row))
    problems = w.violations()
    assert problems and all(rid in p or twice in p for p in problems)
    w.run(lambda tx: tx.delete("owner_refunds", twice))
    elsewhere = f"{owner_id}/{int(hour) - 86_400_000:016d}/{rid}"
    w.run(lambda tx: tx.put("owner_refunds", elsewhere, row))
    assert w.violations() == [f"owner_refunds row {elsewhere} names no refund made then"]
    w.run(lambda tx: tx.delete("owner_refunds", elsewhere))
    # A row naming no refund at all.
    stray = provider_key.rpartition("/")[0] + "/rfd_nope"
    w.run(lambda tx: tx.put("provider_refunds", stray, {"amount": 1, "payout": 1, "fee": 0}))
    assert w.violations() == [f"provider_refunds row {stray} names no refund made then"]
    w.run(lambda tx: tx.delete("provider_refunds", stray))
    assert w.violations() == []


def _ledger_of(store: LmdbStore, holds: int) -> None:
    """`holds` holds, each resolved, in batches of 500 per operation."""
    def batch(tx, n):
        for _ in range(n):
            held = ledger.hold(tx, "w", "e", 3, "hold", 1_000, 5_000)
            ledger.resolve(tx, held["transfer_id"], ledger.POST_PENDING, 1_000, amount=2)
    for done in range(0, holds, 500):
        size = min(500, holds - done)
        store.submit_sync(lambda tx, n=size: batch(tx, n))


def _audit_peak(store: LmdbStore) -> tuple[list[str], int]:
    """The audit's problems and its peak of traced Python memory, in bytes."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        problems = store.read(audit.check)
        return problems, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_what_the_audit_holds_does_not_grow_with_the_ledger(tmp_path):
    store = LmdbStore(tmp_path, durable=False)
    try:
        def setup(tx):
            ledger.ensure_platform_accounts(tx, 1_000)
            ledger.create_account(tx, ledger.new_account("w", "wallet", 1_000,
                                                         no_overdraft=True))
            ledger.create_account(tx, ledger.new_account("e", "escrow", 1_000,
                                                         no_overdraft=False))
            ledger.transfer(tx, ledger.FUNDING_ACCOUNT, "w", 10**9, "fund", 1_000)
        store.submit_sync(setup)
        _ledger_of(store, 1_000)
        store.submit_sync(lambda tx: ledger.roll_up(tx, limit=100_000))
        problems, small = _audit_peak(store)
        assert problems == []
        _ledger_of(store, 7_000)  # eight times the holds
        store.submit_sync(lambda tx: ledger.roll_up(tx, limit=100_000))
        problems, large = _audit_peak(store)
        assert problems == []
        # Counting resolutions per hold held about 120 bytes per hold (800 KB here).
        assert large < small + 50_000, (small, large)
    finally:
        store.close()
