"""Refill rules and the blast radius, the kill switch, refunds, the request rate limiter
and the journal audit, on the core with a controlled clock."""

from __future__ import annotations

import base64
import json

import pytest
from nacl.signing import VerifyKey

from broker.core import (
    audit,
    authorizations,
    metering,
    policy,
    refills,
    refunds,
    registry,
    sweeps,
    tenancy,
    wallets,
)
from broker.core.access import Principal
from broker.core.rate_limits import RequestLimiter, RequestRate
from common import vouchers
from common.errors import BrokerError, Code

from .world import World

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 0, "output_tokens_1k_price": 0,
          "call_price": 0}  # 1 micro-credit per GPU-millisecond


class Setup:
    def __init__(self, cap=1_000_000, target=1_000_000, funded=1_000_000, treasury=10_000_000):
        self.w = w = World()
        self.owner, self.wallet, agent, self.owner_p = w.tenant(
            treasury=treasury, cap=cap, refill_target=target, funded=funded)
        key = w.run(lambda tx: tenancy.create_api_key(
            tx, "agent", w.now, owner_id=self.owner["owner_id"],
            wallet_id=self.wallet["wallet_id"]))
        # A real key, so that revoking it is seen by the kill switch.
        self.agent = Principal(key["key_id"], "agent", agent.owner_id, agent.wallet_id)
        self.provider, self.worker_p = w.provider()
        self.worker = w.run(lambda tx: registry.register(
            tx, self.worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]},
            PRICES, w.now))

    def policy(self, **raw):
        self.w.run(lambda tx: policy.set_policy(tx, self.owner_p, "", raw, False, self.w.now))

    def open(self, amount: int):
        w = self.w
        auth = w.run(lambda tx: authorizations.authorize(
            tx, self.agent, amount, {}, 60, w.now, w.config, w.signer.key_id))
        claims = vouchers.verify(authorizations.voucher_token(auth, w.signer), w.verify_keys(),
                                 w.now)
        return auth, w.run(lambda tx: metering.redeem(
            tx, self.worker_p, claims, self.worker["worker_id"], "", "", w.now, w.config))

    def report(self, ses, seq: int, gpu_ms: int):
        return self.w.run(lambda tx: metering.record_usage(
            tx, self.worker_p, ses["session_id"], seq, {"gpu_ms": gpu_ms}, self.w.now))

    def finish(self, ses, gpu_ms: int):
        return self.w.run(lambda tx: metering.finish(
            tx, self.worker_p, ses["session_id"], {"gpu_ms": gpu_ms}, self.w.now,
            self.w.config, self.w.signer))

    def spend_all(self, amount: int, *, stop: bool = False):
        """A job that uses its whole hold: FINISHED, or STOPPED by the broker first."""
        _, ses = self.open(amount)
        if stop:
            self.w.now += 100
            assert self.report(ses, 1, amount).stop_reason
        return self.finish(ses, amount)

    def balance(self):
        return self.w.balance(self.wallet["wallet_id"])

    def status(self):
        return self.w.read(lambda tx: refills.status_of(
            tx, tx.get("wallets", self.wallet["wallet_id"]), self.w.now))


# -- refill rules and the blast radius -------------------------------------------------------


def test_daily_refill_cap_and_the_blast_radius():
    s = Setup()
    s.policy(refills={"daily_cap": 300_000})
    assert s.status()["blast_radius_today"] == 1_000_000 + 300_000
    spent = 0
    while True:  # a thief with the key spends all it can
        available = s.balance()["available"]
        if not available:
            break
        spent += s.spend_all(available)["charged"]
    assert spent == 1_300_000
    assert s.status()["refilled_today"] == 300_000 and s.status()["blast_radius_today"] == 0
    with pytest.raises(BrokerError) as caught:
        s.w.run(lambda tx: authorizations.authorize(
            tx, s.agent, 1, {}, 60, s.w.now, s.w.config, s.w.signer.key_id))
    assert caught.value.reason == "INSUFFICIENT_FUNDS"
    s.w.now += 86_400_000  # the next UTC day allows another 300000
    assert s.status()["blast_radius_today"] == 300_000
    assert s.w.violations() == []


def test_a_refill_replaces_the_charge_and_leaves_open_holds_alone():
    """An open hold is not spent: settling a job beside it refills only what the job
    charged, and the wallet never ends above its refill target (issue 18, item 1)."""
    s = Setup(cap=2_000_000, target=1_000_000, funded=1_000_000)
    held = s.w.run(lambda tx: authorizations.authorize(
        tx, s.agent, 300_000, {}, 60, s.w.now, s.w.config, s.w.signer.key_id))
    s.spend_all(58)
    assert s.balance() == {"posted": 1_000_000, "pending": 300_000, "available": 700_000}
    assert s.status()["refilled_today"] == 58
    s.w.run(lambda tx: authorizations.cancel(tx, s.agent, held["authorization_id"], s.w.now))
    assert s.balance()["available"] == 1_000_000  # back at the target, not above it
    assert s.w.balance(s.owner["treasury_account_id"])["posted"] == 10_000_000 - 1_000_000 - 58
    assert s.w.violations() == []


def test_the_blast_radius_is_bounded_by_the_limits():
    s = Setup()
    s.policy(limits={"daily": 400_000}, refills={"daily_cap": 300_000})
    assert s.status()["blast_radius_today"] == 400_000
    _, ses = s.open(100_000)
    assert s.status()["blast_radius_today"] == 100_000 + 300_000  # the hold is in "pending"
    s.w.run(lambda tx: wallets.set_frozen(tx, s.owner["owner_id"], s.wallet["wallet_id"], True,
                                          s.w.now))
    assert s.status()["blast_radius_today"] == 100_000  # frozen: only what is held


def test_refills_pause_after_consecutive_failures_until_resumed():
    s = Setup(cap=100_000, target=50_000, funded=50_000)
    s.policy(refills={"pause_after_failures": 2})
    s.spend_all(10_000, stop=True)
    assert s.balance()["available"] == 50_000  # refilled after the first stopped job
    s.spend_all(10_000)  # FINISHED ends the streak
    s.spend_all(10_000, stop=True)
    s.spend_all(10_000, stop=True)  # the second in a row pauses refills: no refill
    status = s.status()
    assert (status["failures"], status["paused"]) == (2, True)
    assert s.balance()["available"] == 40_000
    s.spend_all(10_000)  # a success does not lift the pause
    assert s.balance()["available"] == 30_000 and s.status()["paused"]
    found = s.w.read(lambda tx: [a["kind"] for _, a in tx.scan("alerts")])
    assert found == ["refills_paused"]
    s.w.run(lambda tx: refills.resume(tx, s.owner_p, s.wallet["wallet_id"], s.w.now))
    s.spend_all(10_000)
    assert s.balance()["available"] == 50_000
    kinds = s.w.read(lambda tx: [e["kind"] for _, e in tx.scan("journal")])
    assert "refills_paused" in kinds and "refills_resumed" in kinds


# -- the kill switch ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["freeze", "revoke"])
def test_kill_switch_stops_the_session_at_its_next_report(how):
    s = Setup()
    auth, ses = s.open(500_000)
    s.w.now += 1000
    assert s.report(ses, 1, 1000).stop_reason == ""
    if how == "freeze":
        s.w.run(lambda tx: wallets.set_frozen(tx, s.owner["owner_id"], s.wallet["wallet_id"],
                                              True, s.w.now))
    else:
        s.w.run(lambda tx: tenancy.revoke_api_key(tx, s.agent.key_id, s.w.now))
    s.w.now += 1000
    decision = s.report(ses, 2, 2000)
    assert (decision.stop_reason, decision.charged) == ("revoked", 2000)
    receipt = s.finish(ses, 2100)  # the worker stops within its interval
    assert (receipt["outcome"], receipt["charged"]) == ("STOPPED", 2100)
    assert s.w.violations() == []


def test_a_killed_session_whose_worker_never_finishes_settles_on_acknowledged_usage():
    s = Setup()
    _, ses = s.open(500_000)
    s.w.now += 1000
    s.report(ses, 1, 1000)
    s.w.run(lambda tx: wallets.set_frozen(tx, s.owner["owner_id"], s.wallet["wallet_id"], True,
                                          s.w.now))
    s.w.now += 1000
    assert s.report(ses, 2, 1800).stop_reason == "revoked"
    s.w.now += 1999  # two intervals of grace
    assert s.w.run(lambda tx: sweeps.run(tx, s.w.now, s.w.config, s.w.signer)) == 0
    s.w.now += 1
    assert s.w.run(lambda tx: sweeps.run(tx, s.w.now, s.w.config, s.w.signer)) == 1
    settled = s.w.read(lambda tx: tx.get("sessions", ses["session_id"]))
    receipt = s.w.read(lambda tx: tx.get("receipts", settled["receipt_id"]))
    assert (receipt["outcome"], receipt["charged"], receipt["usage"]["gpu_ms"]) == \
        ("STOPPED", 1800, 1800)
    assert s.balance() == {"posted": 1_000_000 - 1800, "pending": 0,
                           "available": 1_000_000 - 1800}  # frozen: no refill
    assert s.w.violations() == []


def test_a_voucher_redeemed_after_the_freeze_opens_stopped():
    s = Setup()
    auth = s.w.run(lambda tx: authorizations.authorize(
        tx, s.agent, 1000, {}, 60, s.w.now, s.w.config, s.w.signer.key_id))
    s.w.run(lambda tx: wallets.set_frozen(tx, s.owner["owner_id"], s.wallet["wallet_id"], True,
                                          s.w.now))
    claims = vouchers.verify(authorizations.voucher_token(auth, s.w.signer), s.w.verify_keys(),
                             s.w.now)
    ses = s.w.run(lambda tx: metering.redeem(tx, s.worker_p, claims, s.worker["worker_id"], "",
                                             "", s.w.now, s.w.config))
    assert ses["stop_reason"] == "revoked"
    assert s.finish(ses, 0)["charged"] == 0


# -- refunds ---------------------------------------------------------------------------------


def test_partial_refunds_once_each_never_above_the_charge():
    s = Setup(cap=2_000_000)  # room above the refill target for the refunds
    receipt = s.spend_all(100_003)
    assert (receipt["worker_payout"], receipt["platform_fee"]) == (97_503, 2_500)
    admin = Principal("key_admin", "admin")
    w = s.w
    s.w.run(lambda tx: refunds.dispute(tx, s.owner_p, receipt["receipt_id"], "too slow", w.now))

    def refund(amount):
        return w.run(lambda tx: refunds.refund(tx, admin, receipt["receipt_id"], amount,
                                               "goodwill", w.now, w.config, w.signer))

    before = s.balance()["posted"]
    first = refund(40_000)
    assert (first["provider_refund"], first["fee_refund"]) == (39_001, 999)
    assert first["credited_account_id"] == s.wallet["wallet_id"]
    assert s.balance()["posted"] == before + 40_000
    VerifyKey(w.signer.signing_key.verify_key.encode()).verify(
        base64.b64decode(first["signed_payload"]), base64.b64decode(first["signature"]))
    assert json.loads(base64.b64decode(first["signed_payload"]))["receipt_id"] == \
        receipt["receipt_id"]
    assert first["worker_usage"] == receipt["worker_usage"]
    for amount, reason in ((40_000, "REFUND_DUPLICATE"), (60_004, "REFUND_EXCEEDS_CHARGE")):
        snap = w.store.snapshot()
        with pytest.raises(BrokerError) as caught:
            refund(amount)
        assert caught.value.reason == reason and w.store.snapshot() == snap
    rest = refund(60_003)  # the rest, exactly: payout and fee reversed to the unit
    assert first["provider_refund"] + rest["provider_refund"] == receipt["worker_payout"]
    assert first["fee_refund"] + rest["fee_refund"] == receipt["platform_fee"]
    disputes = w.read(lambda tx: refunds.list_disputes(tx, s.owner_p, 0, ""))["disputes"]
    assert [(d["state"], d["refunded"]) for d in disputes] == [("refunded", 100_003)]
    assert w.violations() == []


def test_a_refund_to_a_full_wallet_goes_to_the_treasury():
    s = Setup()
    receipt = s.spend_all(1000)  # refilled to the cap afterwards
    admin = Principal("key_admin", "admin")
    refund = s.w.run(lambda tx: refunds.refund(tx, admin, receipt["receipt_id"], 500, "x",
                                               s.w.now, s.w.config, s.w.signer))
    assert refund["credited_account_id"] == s.owner["treasury_account_id"]
    assert s.w.violations() == []


def test_owners_see_only_their_receipts():
    s = Setup()
    receipt = s.spend_all(1000)
    _, _, _, stranger = s.w.tenant()
    with pytest.raises(BrokerError) as caught:
        s.w.run(lambda tx: refunds.dispute(tx, stranger, receipt["receipt_id"], "x", s.w.now))
    assert caught.value.reason == "RECEIPT_NOT_FOUND"


# -- request rate limiter ---------------------------------------------------------------------


def test_token_bucket():
    limiter, rate = RequestLimiter(), RequestRate(per_minute=60, burst=2)
    limiter.admit("k", rate, 0)
    limiter.admit("k", rate, 0)
    with pytest.raises(BrokerError) as caught:
        limiter.admit("k", rate, 10)
    error = caught.value
    assert (error.code, error.reason, error.retry_after_ms) == \
        (Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", 990)
    assert error.quota_violations[0][0] == "api_key:k/requests_per_minute"
    limiter.admit("other", rate, 10)  # per key
    limiter.admit("k", rate, 1000)  # one token a second
    with pytest.raises(BrokerError):
        limiter.admit("k", rate, 1001)
    limiter.admit("k", None, 1001)  # no limit configured


# -- the journal audit ---------------------------------------------------------------------------


def test_an_altered_journal_entry_is_named():
    s = Setup()
    s.spend_all(1000)
    w = s.w
    assert w.violations() == []
    entry = w.read(lambda tx: tx.get("journal", f"{5:020d}"))
    entry["data"] = {**entry["data"], "tampered": True}
    w.run(lambda tx: tx.put("journal", f"{5:020d}", entry))
    problems = w.read(audit.check_journal)
    assert len(problems) == 1 and problems[0].startswith(f"journal entry 5 ({entry['kind']},")
    assert "content does not match its hash" in problems[0]
    w.run(lambda tx: tx.delete("journal", f"{7:020d}"))
    assert any(p.startswith("journal entry 7: missing") for p in w.read(audit.check_journal))
