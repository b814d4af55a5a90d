"""Subscription credits in the core: plans, each period granted exactly once (also after
downtime), grants spent first in burn order, expired credits back to the issuer, and the
balance breakdown. Every step ends with the ledger and grant invariants intact."""

import pytest

from broker.core import authorizations, grants, ledger, metering, registry, subscriptions, wallets
from common import vouchers
from common.errors import BrokerError
from common.money import charge_for

from .world import World

HOUR = 3_600_000
PRICES = {"gpu_second_price": 1000, "call_price": 0}


class Setup:
    def __init__(self, *, treasury=1_000_000, cap=100_000, funded=50_000):
        self.w = World()
        self.owner, self.wallet, self.agent, self.owner_p = self.w.tenant(
            treasury=treasury, cap=cap, refill_target=0, funded=funded)
        self.wallet_id = self.wallet["wallet_id"]
        self.treasury_id = self.owner["treasury_account_id"]
        _, self.worker_p = self.w.provider()
        self.worker = self.w.run(lambda tx: registry.register(
            tx, self.worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]},
            PRICES, self.w.now))

    def plan(self, credits=10_000, period_s=3600, rollover=0, priority=0):
        return self.w.run(lambda tx: subscriptions.create_plan(
            tx, self.owner["owner_id"], "plan", credits, period_s, rollover, priority,
            self.w.now))

    def subscribe(self, plan):
        return self.w.run(lambda tx: subscriptions.subscribe(
            tx, self.owner["owner_id"], plan["plan_id"], self.wallet_id, self.w.now))

    def sweep(self):
        return self.w.run(lambda tx: subscriptions.grant_due(tx, self.w.now)
                          + subscriptions.expire_due(tx, self.w.now))

    def grants(self):
        return self.w.read(lambda tx: subscriptions.list_grants(
            tx, self.owner_p, self.wallet_id, 1000, ""))

    def balance(self, account_id=None):
        return self.w.balance(account_id or self.wallet_id)

    def check(self):
        assert self.w.violations() == []
        assert self.w.read(grants.check) == []

    def spend(self, amount, ttl_s=600):
        """Authorize `amount` and redeem; returns (auth, session, finish(usage))."""
        auth = self.w.run(lambda tx: authorizations.authorize(
            tx, self.agent, amount, {"model": "m"}, ttl_s, self.w.now, self.w.config,
            self.w.signer.key_id))
        token = authorizations.voucher_token(auth, self.w.signer)
        claims = vouchers.verify(token, self.w.verify_keys(), self.w.now)
        ses = self.w.run(lambda tx: metering.redeem(
            tx, self.worker_p, claims, self.worker["worker_id"], "cpu", "m", self.w.now,
            self.w.config))
        return auth, ses, (lambda usage: self.w.run(lambda tx: metering.finish(
            tx, self.worker_p, ses["session_id"], usage, self.w.now, self.w.config,
            self.w.signer)))


def test_subscribing_grants_the_first_period_at_once_from_the_treasury():
    s = Setup()
    plan = s.plan(credits=10_000, rollover=1)
    sub = s.subscribe(plan)
    assert sub["next_period"] == 1 and sub["next_ms"] == s.w.now + HOUR
    (grant,) = s.grants()["grants"]
    assert (grant["amount"], grant["remaining"], grant["period"]) == (10_000, 10_000, 0)
    assert grant["expire_ms"] == s.w.now + 2 * HOUR  # its period plus one rollover period
    assert s.balance() == {"posted": 60_000, "pending": 0, "available": 60_000,
                           "credits": 10_000}
    assert s.balance(s.treasury_id)["posted"] == 1_000_000 - 50_000 - 10_000
    s.check()


def test_each_period_is_granted_exactly_once_also_after_downtime():
    s = Setup()
    plan = s.plan(credits=1_000, rollover=0)
    s.subscribe(plan)
    assert s.sweep() == 0  # nothing due within the first period
    s.w.now += HOUR - 1
    assert s.sweep() == 0
    s.w.now += 1  # the boundary: period 1
    s.sweep()
    assert [g["period"] for g in s.grants()["grants"]] == [1, 0]
    assert s.sweep() == 0  # again at the same instant: nothing more
    # The broker is "down" for three more boundaries: all three granted once on return.
    s.w.now += 3 * HOUR + 5
    s.sweep()
    while s.sweep():
        pass
    found = s.grants()["grants"]
    assert [g["period"] for g in found] == [4, 3, 2, 1, 0]
    # Periods 0..3 have ended (no rollover): expired, credits back to the issuer.
    states = {g["period"]: (g["state"], g["remaining"], g["returned"]) for g in found}
    assert states == {4: ("active", 1_000, 0), **{p: ("expired", 0, 1_000) for p in range(4)}}
    assert s.balance()["posted"] == 50_000 + 1_000 and s.balance()["credits"] == 1_000
    s.check()


def test_spending_burns_grants_first_earliest_expiry_then_priority_then_purchased():
    s = Setup()
    long_plan = s.plan(credits=3_000, rollover=2, priority=0)
    short_plan = s.plan(credits=2_000, rollover=0, priority=0)
    favoured = s.plan(credits=1_000, rollover=0, priority=9)  # same expiry as short_plan
    for plan in (long_plan, short_plan, favoured):
        s.subscribe(plan)
    by_plan = {g["plan_id"]: g for g in s.grants()["grants"]}
    auth, ses, finish = s.spend(10_000)
    # The hold reserves grants in burn order: favoured (priority), short, then long.
    reserved = {pid: g["reserved"] for pid, g in
                ((pid, s.w.read(lambda tx, g=g: tx.get("grants", g["grant_id"])))
                 for pid, g in by_plan.items())}
    assert reserved == {favoured["plan_id"]: 1_000, short_plan["plan_id"]: 2_000,
                        long_plan["plan_id"]: 3_000}
    assert s.grants()["reserved_credits"] == 6_000
    s.check()
    receipt = finish({"gpu_ms": 2_500})  # charge 2_500: favoured 1_000, short 1_500
    assert receipt["charged"] == charge_for({"gpu_ms": 2_500}, PRICES) == 2_500
    after = {g["plan_id"]: (g["remaining"], g["spent"], g["reserved"])
             for g in s.grants()["grants"]}
    assert after == {favoured["plan_id"]: (0, 1_000, 0), short_plan["plan_id"]: (500, 1_500, 0),
                     long_plan["plan_id"]: (3_000, 0, 0)}
    # Purchased funds untouched: posted fell by the charge, all of it credits.
    bal = s.balance()
    assert bal["posted"] == 50_000 + 6_000 - 2_500 and bal["credits"] == 3_500
    assert bal["posted"] - bal["credits"] == 50_000
    s.check()
    # A charge beyond the credits burns them all, then purchased funds.
    _, _, finish = s.spend(10_000)
    finish({"gpu_ms": 5_000})
    bal = s.balance()
    assert "credits" not in bal and bal["posted"] == 50_000 - 1_500
    s.check()


def test_expired_credits_go_back_to_the_issuer_and_reserved_ones_when_their_hold_ends():
    s = Setup()
    s.subscribe(s.plan(credits=4_000, rollover=0))
    treasury0 = s.balance(s.treasury_id)["posted"]
    auth, ses, finish = s.spend(3_000, ttl_s=7200)  # reserves 3_000 of the 4_000 credits
    s.w.now += HOUR  # the grant expires while the hold is pending
    s.sweep()
    (grant,) = [g for g in s.grants()["grants"] if g["period"] == 0]
    assert (grant["state"], grant["remaining"], grant["reserved"], grant["returned"]) == (
        "expired", 3_000, 3_000, 1_000)
    assert s.balance(s.treasury_id)["posted"] == treasury0 + 1_000 - 4_000  # period 1 granted
    s.check()
    finish({"gpu_ms": 1_200})  # the hold spends 1_200 of the expired grant's reservation
    grant = s.w.read(lambda tx: tx.get("grants", grant["grant_id"]))
    assert (grant["remaining"], grant["spent"], grant["returned"]) == (0, 1_200, 2_800)
    assert s.balance(s.treasury_id)["posted"] == treasury0 + 1_000 + 1_800 - 4_000
    s.check()


def test_a_cancelled_authorization_frees_its_reserved_credits():
    s = Setup()
    s.subscribe(s.plan(credits=4_000))
    auth = s.w.run(lambda tx: authorizations.authorize(
        tx, s.agent, 5_000, {}, 60, s.w.now, s.w.config, s.w.signer.key_id))
    assert s.grants()["reserved_credits"] == 4_000
    s.w.run(lambda tx: authorizations.cancel(tx, s.agent, auth["authorization_id"], s.w.now))
    assert s.grants()["reserved_credits"] == 0 and s.balance()["credits"] == 4_000
    s.check()


def test_credits_do_not_count_against_the_cap_and_purchases_still_do():
    s = Setup(cap=60_000, funded=55_000)
    s.subscribe(s.plan(credits=20_000))
    assert s.balance()["posted"] == 75_000  # above the cap: credits are on top of it
    assert s.w.read(lambda tx: ledger.get_account(tx, s.wallet_id))["max_balance"] == 80_000
    with pytest.raises(BrokerError) as err:
        s.w.run(lambda tx: wallets.fund_wallet(tx, s.owner["owner_id"], s.wallet_id, 5_001,
                                               s.w.now))
    assert err.value.reason == "WALLET_CAP_EXCEEDED"
    s.w.run(lambda tx: wallets.fund_wallet(tx, s.owner["owner_id"], s.wallet_id, 5_000,
                                           s.w.now))
    s.check()


def test_a_short_treasury_grants_what_it_has_once():
    s = Setup(treasury=60_000, funded=50_000)
    s.subscribe(s.plan(credits=25_000))
    s.w.now += HOUR
    s.sweep()
    amounts = [(g["period"], g["requested"], g["amount"]) for g in s.grants()["grants"]]
    assert amounts == [(1, 25_000, 0), (0, 25_000, 10_000)]
    s.check()


@pytest.mark.parametrize("credits,period,rollover,priority,reason", [
    (0, 3600, 0, 0, "INVALID_AMOUNT"), (-5, 3600, 0, 0, "INVALID_AMOUNT"),
    (100, 0, 0, 0, "INVALID_PERIOD"), (100, -1, 0, 0, "INVALID_PERIOD"),
    (100, 366 * 86400 + 1, 0, 0, "INVALID_PERIOD"), (100, 60, -1, 0, "INVALID_PERIOD"),
    (100, 60, 121, 0, "INVALID_PERIOD"), (100, 60, 0, 1001, "INVALID_ARGUMENT")])
def test_bad_plans_are_refused(credits, period, rollover, priority, reason):
    s = Setup()
    with pytest.raises(BrokerError) as err:
        s.plan(credits=credits, period_s=period, rollover=rollover, priority=priority)
    assert (err.value.code.value, err.value.reason) == ("INVALID_ARGUMENT", reason)


def test_a_second_subscription_of_a_wallet_to_a_plan_already_exists():
    s = Setup()
    plan = s.plan()
    sub = s.subscribe(plan)
    before = s.w.store.snapshot()
    with pytest.raises(BrokerError) as err:
        s.subscribe(plan)
    assert (err.value.code.value, err.value.reason) == ("ALREADY_EXISTS", "SUBSCRIPTION_EXISTS")
    assert s.w.store.snapshot() == before
    # Cancelled: no more grants, and the wallet may subscribe again.
    s.w.run(lambda tx: subscriptions.cancel(tx, s.owner["owner_id"], sub["subscription_id"],
                                            s.w.now))
    s.w.now += 5 * HOUR
    s.sweep()
    assert [g["period"] for g in s.grants()["grants"]] == [0]
    s.subscribe(plan)
    assert len(s.grants()["grants"]) == 2
    s.check()
