import pytest

from broker.core import ledger
from broker.store import MemoryStore
from common.errors import BrokerError

NOW = 1_000


@pytest.fixture
def store():
    s = MemoryStore()

    def setup(tx):
        ledger.ensure_platform_accounts(tx, NOW)
        ledger.create_account(tx, ledger.new_account("w", "wallet", NOW, no_overdraft=True,
                                                     max_balance=1_000))
        ledger.create_account(tx, ledger.new_account("e", "escrow", NOW, no_overdraft=False))
        ledger.transfer(tx, ledger.FUNDING_ACCOUNT, "w", 500, "fund", NOW)
    s.submit_sync(setup)
    return s


def bal(store, account):
    return store.read(lambda tx: ledger.balance(ledger.get_account(tx, account)))


def reason(store, op):
    with pytest.raises(BrokerError) as err:
        store.submit_sync(op)
    return err.value.reason


def test_hold_reserves_and_post_releases_the_rest(store):
    held = store.submit_sync(lambda tx: ledger.hold(tx, "w", "e", 300, "hold", NOW, 5_000))
    assert bal(store, "w") == {"posted": 500, "pending": 300, "available": 200}
    store.submit_sync(lambda tx: ledger.resolve(tx, held["transfer_id"], ledger.POST_PENDING,
                                                NOW, amount=120))
    assert bal(store, "w") == {"posted": 380, "pending": 0, "available": 380}
    e = store.read(lambda tx: ledger.get_account(tx, "e"))
    assert (e["credits_posted"], e["credits_pending"]) == (120, 0)
    state = store.read(lambda tx: tx.get("hold_states", held["transfer_id"]))
    assert state["state"] == "posted" and state["posted"] + state["released"] == 300


def test_no_overdraft_is_checked_when_the_hold_is_created(store):
    store.submit_sync(lambda tx: ledger.hold(tx, "w", "e", 400, "hold", NOW, 5_000))
    before = store.snapshot()
    assert reason(store, lambda tx: ledger.hold(tx, "w", "e", 101, "hold", NOW, 5_000)) \
        == "INSUFFICIENT_FUNDS"
    assert reason(store, lambda tx: ledger.transfer(tx, "w", "e", 101, "x", NOW)) \
        == "INSUFFICIENT_FUNDS"
    assert store.snapshot() == before


def test_a_hold_resolves_exactly_once(store):
    held = store.submit_sync(lambda tx: ledger.hold(tx, "w", "e", 100, "hold", NOW, 5_000))
    hid = held["transfer_id"]
    store.submit_sync(lambda tx: ledger.resolve(tx, hid, ledger.VOID_PENDING, NOW))
    for kind in (ledger.POST_PENDING, ledger.VOID_PENDING, ledger.EXPIRE_PENDING):
        assert reason(store, lambda tx, k=kind: ledger.resolve(tx, hid, k, NOW, amount=1)) \
            == "HOLD_ALREADY_RESOLVED"
    assert bal(store, "w") == {"posted": 500, "pending": 0, "available": 500}


@pytest.mark.parametrize("amount", [0, -1, 101])
def test_post_amount_must_be_within_the_hold(store, amount):
    held = store.submit_sync(lambda tx: ledger.hold(tx, "w", "e", 100, "hold", NOW, 5_000))
    assert reason(store, lambda tx: ledger.resolve(
        tx, held["transfer_id"], ledger.POST_PENDING, NOW, amount=amount)) == "INVALID_AMOUNT"


def test_cap_limits_credits(store):
    assert reason(store, lambda tx: ledger.transfer(tx, ledger.FUNDING_ACCOUNT, "w", 501, "f",
                                                    NOW)) == "WALLET_CAP_EXCEEDED"
    store.submit_sync(lambda tx: ledger.transfer(tx, ledger.FUNDING_ACCOUNT, "w", 500, "f", NOW))
    assert bal(store, "w")["posted"] == 1_000


def test_due_holds_lists_only_expired_unresolved_holds(store):
    a = store.submit_sync(lambda tx: ledger.hold(tx, "w", "e", 10, "hold", NOW, 2_000))
    b = store.submit_sync(lambda tx: ledger.hold(tx, "w", "e", 10, "hold", NOW, 3_000))
    assert store.read(lambda tx: ledger.due_holds(tx, 1_999)) == []
    assert store.read(lambda tx: ledger.due_holds(tx, 2_000)) == [a["transfer_id"]]
    store.submit_sync(lambda tx: ledger.resolve(tx, a["transfer_id"], ledger.EXPIRE_PENDING,
                                                2_000))
    assert store.read(lambda tx: ledger.due_holds(tx, 10_000)) == [b["transfer_id"]]


def test_account_transfers_newest_first_with_paging(store):
    for i in range(5):
        store.submit_sync(lambda tx, i=i: ledger.transfer(tx, "w", "e", 1, f"t{i}", NOW))
    rows = store.read(lambda tx: ledger.account_transfers(tx, "w", limit=3))
    assert [r["code"] for r in rows] == ["t4", "t3", "t2"]
    rest = store.read(lambda tx: ledger.account_transfers(tx, "w", before_seq=rows[-1]["seq"]))
    assert [r["code"] for r in rest] == ["t1", "t0", "fund"]


def test_platform_accounts_are_appended_to_and_rolled_up_without_changing_a_balance(store):
    """An operation never rewrites a platform account's row: it appends an entry; the
    roll-up folds the entries into the row. The balance reads the same before and after,
    and the audit checks rows plus entries against the transfers."""
    from broker.core import audit

    held = store.submit_sync(lambda tx: ledger.hold(tx, "w", ledger.ESCROW_ACCOUNT, 300,
                                                    "hold", NOW, 5_000))
    store.submit_sync(lambda tx: ledger.resolve(tx, held["transfer_id"], ledger.POST_PENDING,
                                                NOW, amount=100))
    store.submit_sync(lambda tx: ledger.transfer(tx, ledger.ESCROW_ACCOUNT,
                                                 ledger.FEE_ACCOUNT, 100, "fee", NOW))
    row = store.read(lambda tx: tx.get("accounts", ledger.ESCROW_ACCOUNT))
    assert (row["credits_pending"], row["credits_posted"]) == (0, 0)  # untouched so far
    entries = store.read(lambda tx: dict(tx.scan("account_entries")))
    assert len(entries) == 5  # hold, post (escrow); fund (funding); fee (escrow, fees)
    before = {a: bal(store, a) for a in (ledger.ESCROW_ACCOUNT, ledger.FEE_ACCOUNT,
                                         ledger.FUNDING_ACCOUNT)}
    assert before[ledger.FEE_ACCOUNT]["posted"] == 100
    assert store.read(audit.check) == []
    assert store.submit_sync(ledger.roll_up) == 5
    assert store.read(lambda tx: list(tx.scan("account_entries"))) == []
    assert {a: bal(store, a) for a in before} == before
    assert store.read(audit.check) == []
    assert store.submit_sync(ledger.roll_up) == 0


def test_the_audit_names_an_altered_platform_entry(store):
    from broker.core import audit

    key = store.read(lambda tx: next(iter(tx.scan("account_entries")))[0])
    store.submit_sync(lambda tx: tx.put("account_entries", key, {"debits_posted": 499}))
    problems = store.read(audit.check)
    assert f"account entry {key}: says {{'debits_posted': 499}}, transfer" in problems[-1] \
        or any(p.startswith(f"account entry {key}") for p in problems)
    assert any("platform:funding: debits_posted is 499" in p for p in problems)
