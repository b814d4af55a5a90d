"""Reserved capacity in the core: a lease's hold, its exclusive worker, jobs metered
against it at no charge of their own, and its settlement per its stated terms."""

import base64

import pytest
from nacl.public import PrivateKey

from broker.core import (
    authorizations,
    grants,
    lease_settlement,
    leases,
    ledger,
    metering,
    periodic,
    policy,
    receipts,
    registry,
    spend,
)
from common import vouchers
from common.errors import BrokerError
from common.money import lease_charge, split_fee

from .world import World

TERMS = {"gpu_second_price": 1000, "call_price": 10, "reserved_hour_price": 1_800_000,
         "unused_reserved_bps": 2_500}
HOUR = 3_600_000


class Site:
    def __init__(self, terms=TERMS):
        self.w = World()
        self.owner, self.wallet, self.agent, self.owner_p = self.w.tenant(
            treasury=10_000_000, cap=5_000_000, refill_target=0, funded=4_000_000)
        self.provider, self.worker_p = self.w.provider()
        self.worker_id = self.w.run(lambda tx: registry.register(
            tx, self.worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]},
            terms, self.w.now))["worker_id"]
        self.live = {self.worker_id}

    def lease(self, seconds=600, worker_id=None, agent=None):
        return self.w.run(lambda tx: leases.create(
            tx, agent or self.agent, worker_id or self.worker_id, seconds, "", self.live,
            self.w.now))

    def job(self, lease_id):
        auth = self.w.run(lambda tx: leases.authorize_job(
            tx, self.agent, lease_id, "m", self.w.now, self.w.signer.key_id))
        return auth, authorizations.voucher_token(auth, self.w.signer)

    def redeem(self, token):
        claims = vouchers.verify(token, self.w.verify_keys(), self.w.now)
        return self.w.run(lambda tx: metering.redeem(
            tx, self.worker_p, claims, self.worker_id, "cpu", "m", self.w.now, self.w.config))

    def report(self, session_id, seq, gpu_ms):
        return self.w.run(lambda tx: metering.record_usage(
            tx, self.worker_p, session_id, seq, {"gpu_ms": gpu_ms, "calls": 1}, self.w.now))

    def finish(self, session_id, gpu_ms):
        return self.w.run(lambda tx: metering.finish(
            tx, self.worker_p, session_id, {"gpu_ms": gpu_ms, "calls": 1}, self.w.now,
            self.w.config, self.w.signer))

    def sweep(self):
        return self.w.run(lambda tx: periodic.run_due(tx, self.w.now, self.w.config,
                                                      self.w.signer))

    def get(self, lease_id):
        return self.w.read(lambda tx: leases.with_usage(tx, leases.get(
            tx, self.agent, lease_id)))

    def check(self):
        assert self.w.violations() == [] and self.w.read(grants.check) == []


@pytest.mark.parametrize("lease_ms,used,rate,bps,charge", [
    (HOUR, 0, 3_600_000, 10_000, 3_600_000),    # the whole lease: 1 per ms
    (HOUR, HOUR, 3_600_000, 0, 3_600_000),      # all used, unused terms irrelevant
    (HOUR, 0, 3_600_000, 0, 0),                 # unused and free
    (1, 0, 1, 10_000, 1),                       # 1/3.6e6 of a credit rounds up to 1
    (1, 1, 1, 0, 1),
    (1, 0, 1, 1, 1),                            # 1e-10 rounds up
    (HOUR, 1_000, 3_600_000, 5_000, 1_800_500),  # 1000 + 3_599_000 / 2
    (3_600, 1, 1_000, 1, 1),                    # (1e4 + 3599) * 1000 / 3.6e10 -> ceil
    (3_600_000 * 36, 0, 1, 10_000, 36),         # exact: no rounding
    (HOUR, HOUR + 5, 7, 0, 7),                  # used is capped at the lease
])
def test_lease_charge_rounds_up_once_on_the_whole_lease(lease_ms, used, rate, bps, charge):
    assert lease_charge(lease_ms, used, rate, bps) == charge
    exact = (min(used, lease_ms) * 10_000 + (lease_ms - min(used, lease_ms)) * bps) * rate
    assert exact <= charge * 36_000_000_000 < exact + 36_000_000_000


def test_a_lease_holds_its_whole_price_and_reserves_the_worker():
    s = Site()
    lease = s.lease(600)  # 10 min at 1.8M/h = 300_000
    assert lease["held"] == 300_000 == lease_charge(600_000, 0, 1_800_000, 10_000)
    assert s.w.balance(s.wallet["wallet_id"])["pending"] == 300_000
    # Another agent's voucher for the worker is refused while the lease runs.
    auth = s.w.run(lambda tx: authorizations.authorize(
        tx, s.agent, 1000, {"worker_id": s.worker_id}, 60, s.w.now, s.w.config,
        s.w.signer.key_id))
    before = s.w.store.snapshot()
    with pytest.raises(BrokerError) as err:
        s.redeem(authorizations.voucher_token(auth, s.w.signer))
    assert (err.value.code.value, err.value.reason) == ("FAILED_PRECONDITION", "WORKER_LEASED")
    assert s.w.store.snapshot() == before
    with pytest.raises(BrokerError) as err:
        s.lease(60)
    assert err.value.reason == "WORKER_ALREADY_LEASED"
    assert err.value.metadata["leased_until_ms"] == str(lease["end_ms"])
    s.check()


def test_jobs_under_a_lease_are_metered_against_it_and_it_settles_per_its_terms():
    s = Site()
    lease = s.lease(600)
    auth, token = s.job(lease["lease_id"])
    assert (auth["amount"], auth["hold_id"], auth["expire_ms"]) == (0, "", lease["end_ms"])
    ses = s.redeem(token)
    assert ses["prices"] == leases.ZERO_PRICES and ses["budget"] == lease["held"]
    decision = s.report(ses["session_id"], 1, 40_000)
    assert (decision.charged, decision.stop_reason) == (0, "")
    s.w.now += 50_000
    receipt = s.finish(ses["session_id"], 61_000)
    assert (receipt["held"], receipt["charged"], receipt["released"]) == (0, 0, 0)
    assert s.get(lease["lease_id"])["used_ms"] == 61_000
    # A second job, redeemed and never finished: settled on its acknowledged usage.
    _, token2 = s.job(lease["lease_id"])
    ses2 = s.redeem(token2)
    s.report(ses2["session_id"], 1, 9_000)
    _, unused_token = s.job(lease["lease_id"])
    s.w.now = lease["end_ms"] - 1
    assert s.sweep() == 0
    s.w.now += 1
    assert s.sweep() >= 1
    settled = s.get(lease["lease_id"])
    used = 61_000 + 9_000
    charge = lease_charge(600_000, used, 1_800_000, 2_500)
    # used 70 s at 500/s = 35_000; unused 530 s at a quarter of it = 66_250
    assert charge == 35_000 + 66_250
    payout, fee = split_fee(charge, s.w.config.fee_bps)
    assert (settled["state"], settled["used_ms"], settled["charged"], settled["released"],
            settled["worker_payout"], settled["platform_fee"]) == (
        "settled", used, charge, 300_000 - charge, payout, fee)
    assert s.w.balance(s.wallet["wallet_id"]) == {
        "posted": 4_000_000 - charge, "pending": 0, "available": 4_000_000 - charge}
    assert s.w.balance(s.provider["payout_account_id"])["posted"] == payout
    states = [s.w.read(lambda tx, a=a: tx.get("authorizations", a))["state"]
              for a in (auth["authorization_id"], ses2["authorization_id"])]
    assert states == ["settled", "settled"]
    with pytest.raises(BrokerError) as err:  # the unused voucher expired with the lease
        s.redeem(unused_token)
    assert err.value.reason == "VOUCHER_EXPIRED"
    # The statement is signed with the broker's key.
    statement = settled["statement"]
    s.w.signer.signing_key.verify_key.verify(base64.b64decode(statement["signed_payload"]),
                                             base64.b64decode(statement["signature"]))
    # The worker is free again.
    plain = s.w.run(lambda tx: authorizations.authorize(
        tx, s.agent, 1000, {}, 60, s.w.now, s.w.config, s.w.signer.key_id))
    assert s.redeem(authorizations.voucher_token(plain, s.w.signer))["prices"]["call_price"] == 10
    s.check()


def test_jobs_of_an_owner_with_sealed_receipts_count_too():
    """Sealed receipts take the usage out of a settled session: the lease counts each
    job's GPU time as it settles."""
    s = Site()
    s.w.run(lambda tx: receipts.register_key(tx, s.owner_p, bytes(PrivateKey.generate()
                                                                   .public_key), s.w.now))
    lease = s.lease(600)
    _, token = s.job(lease["lease_id"])
    ses = s.redeem(token)
    s.finish(ses["session_id"], 7_000)
    assert "usage" not in s.w.read(lambda tx: tx.get("sessions", ses["session_id"]))
    assert s.get(lease["lease_id"])["used_ms"] == 7_000
    ended = s.w.run(lambda tx: lease_settlement.end(tx, s.agent, lease["lease_id"], s.w.now,
                                                    s.w.config, s.w.signer))
    assert (ended["used_ms"], ended["charged"]) == (
        7_000, lease_charge(600_000, 7_000, 1_800_000, 2_500))
    s.check()


def test_ending_a_lease_early_counts_the_rest_as_unused():
    s = Site()
    lease = s.lease(3600)
    s.w.now += 1_000
    ended = s.w.run(lambda tx: lease_settlement.end(tx, s.agent, lease["lease_id"], s.w.now,
                                                    s.w.config, s.w.signer))
    assert ended["charged"] == lease_charge(HOUR, 0, 1_800_000, 2_500) == 450_000
    assert ended["end_ms"] == s.w.now
    with pytest.raises(BrokerError) as err:
        s.w.run(lambda tx: lease_settlement.end(tx, s.agent, lease["lease_id"], s.w.now,
                                                s.w.config, s.w.signer))
    assert err.value.reason == "LEASE_ALREADY_SETTLED"
    with pytest.raises(BrokerError) as err:
        s.job(lease["lease_id"])
    assert err.value.reason == "LEASE_ENDED"
    assert s.sweep() == 0  # nothing left for the sweep
    s.check()


def test_a_lease_job_voucher_can_be_cancelled_without_a_hold():
    s = Site()
    lease = s.lease(60)
    auth, _ = s.job(lease["lease_id"])
    s.w.run(lambda tx: authorizations.cancel(tx, s.agent, auth["authorization_id"], s.w.now))
    assert s.w.read(lambda tx: tx.get("authorizations", auth["authorization_id"]))[
        "state"] == "cancelled"
    s.check()


def test_bad_leases_are_refused_and_change_nothing():
    s = Site()
    free = s.w.run(lambda tx: registry.register(
        tx, s.worker_p, "", "127.0.0.1:2", {"resource_class": "cpu", "models": ["m"]},
        {"gpu_second_price": 5}, s.w.now))["worker_id"]
    s.live.add(free)
    asleep = s.w.run(lambda tx: registry.register(
        tx, s.worker_p, "", "127.0.0.1:3", {"resource_class": "cpu", "models": ["m"]},
        TERMS, s.w.now))["worker_id"]
    _, _, other_agent, _ = s.w.tenant(funded=10)
    before = s.w.store.snapshot()
    for kwargs, reason in (
            ({"seconds": 0}, "INVALID_ARGUMENT"), ({"seconds": -5}, "INVALID_ARGUMENT"),
            ({"seconds": 7 * 86_400 + 1}, "INVALID_ARGUMENT"),
            ({"worker_id": "wrk_nope"}, "WORKER_NOT_FOUND"),
            ({"worker_id": free}, "LEASE_NOT_OFFERED"),
            ({"worker_id": asleep}, "WORKER_NOT_LIVE"),
            ({"agent": other_agent}, "INSUFFICIENT_FUNDS")):
        with pytest.raises(BrokerError) as err:
            s.lease(**kwargs)
        assert err.value.reason == reason, kwargs
    with pytest.raises(BrokerError) as err:
        s.job("lse_nope")
    assert err.value.reason == "LEASE_NOT_FOUND"
    assert s.w.store.snapshot() == before


def test_a_lease_that_ended_while_the_broker_was_down_settles_before_its_hold_expires():
    s = Site()
    lease = s.lease(60)
    s.w.now += 60_000 + leases.HOLD_MARGIN_MS + 5  # long after: its hold is due too
    # The broker's start-up order: periodic work first, then hold expiry.
    assert s.sweep() == 1
    assert s.w.run(lambda tx: metering.expire_due(tx, s.w.now, s.w.config, s.w.signer)) == 0
    settled = s.get(lease["lease_id"])
    assert settled["charged"] == lease_charge(60_000, 0, 1_800_000, 2_500)
    state = s.w.read(lambda tx: ledger.get_hold(tx, lease["hold_id"]))[1]
    assert state["state"] == "posted"
    s.check()


def test_a_lease_spends_under_the_wallets_policy():
    s = Site()
    wallet_id = s.wallet["wallet_id"]
    s.w.run(lambda tx: policy.set_policy(tx, s.owner_p, wallet_id, {
        "limits": {"daily": 500_000}, "approvals": {"threshold": 350_000}}, False, s.w.now))
    before = s.w.store.snapshot()
    with pytest.raises(BrokerError) as err:  # 15 min = 450_000: above the threshold
        s.lease(900)
    assert err.value.reason == "LEASE_NEEDS_APPROVAL"
    assert s.w.store.snapshot() == before
    lease = s.lease(600)  # 300_000: counted against the daily limit
    assert s.w.read(lambda tx: spend.totals(tx, wallet_id, s.w.now))["day"] == 300_000
    with pytest.raises(BrokerError) as err:
        s.w.run(lambda tx: authorizations.authorize(
            tx, s.agent, 200_001, {}, 60, s.w.now, s.w.config, s.w.signer.key_id))
    assert err.value.reason == "SPEND_LIMIT_EXCEEDED"
    ended = s.w.run(lambda tx: lease_settlement.end(tx, s.agent, lease["lease_id"], s.w.now,
                                                    s.w.config, s.w.signer))
    # Once settled, only its charge counts.
    assert s.w.read(lambda tx: spend.totals(tx, wallet_id, s.w.now))["day"] == ended["charged"]
    s.check()
