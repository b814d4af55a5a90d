"""Spend policies on the core: limits, scope rules, price caps, velocity, approvals."""

from __future__ import annotations

import pytest

from broker.core import approvals, authorizations, journal, metering, policy, spend, sweeps
from common.errors import BrokerError, Code

from .world import T0, World

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 0, "output_tokens_1k_price": 0,
          "call_price": 0}


@pytest.fixture
def w():
    return World()


def tenant(w: World, **kw):
    return w.tenant(treasury=10_000_000, cap=2_000_000, refill_target=0, funded=2_000_000, **kw)


def set_policy(w: World, owner_p, wallet_id: str = "", **raw):
    return w.run(lambda tx: policy.set_policy(tx, owner_p, wallet_id, raw, False, w.now))


def authorize(w: World, agent, amount: int, scope=None, ttl: int = 60):
    return w.run(lambda tx: authorizations.authorize(
        tx, agent, amount, dict(scope or {}), ttl, w.now, w.config, w.signer.key_id))


def refused(w: World, op) -> BrokerError:
    """op fails with a BrokerError and changes nothing."""
    before = w.store.snapshot()
    with pytest.raises(BrokerError) as caught:
        w.run(op)
    assert w.store.snapshot() == before
    return caught.value


def test_no_policy_changes_nothing(w):
    _, wallet, agent, _ = tenant(w)
    auth = authorize(w, agent, 500_000)
    assert auth["state"] == "held"
    assert w.read(lambda tx: spend.totals(tx, wallet["wallet_id"], w.now))["day"] == 500_000


def test_daily_limit_counts_holds_and_settled_charges(w):
    _, wallet, agent, owner_p = tenant(w)
    set_policy(w, owner_p, limits={"daily": 1_000_000})
    first = authorize(w, agent, 600_000)
    error = refused(w, lambda tx: authorizations.authorize(
        tx, agent, 400_001, {}, 60, w.now, w.config, w.signer.key_id))
    assert (error.code, error.reason) == (Code.RESOURCE_EXHAUSTED, "SPEND_LIMIT_EXCEEDED")
    assert error.metadata == {"wallet": wallet["wallet_id"], "limit": "daily",
                              "limit_amount": "1000000", "spent": "600000",
                              "requested": "400001"}
    assert error.quota_violations and "daily limit 1000000" in error.quota_violations[0][1]
    assert 0 < error.retry_after_ms <= 86_400_000  # until the UTC day ends
    assert spend.period_end_ms("day", w.now) - w.now == error.retry_after_ms
    authorize(w, agent, 400_000)  # exactly at the limit is allowed
    # Cancelling gives the room back; a settled charge keeps counting.
    w.run(lambda tx: authorizations.cancel(tx, agent, first["authorization_id"], w.now))
    assert w.read(lambda tx: spend.totals(tx, wallet["wallet_id"], w.now))["day"] == 400_000
    assert w.violations() == []


def test_settlement_counts_the_charge_not_the_hold(w):
    _, wallet, agent, owner_p = tenant(w)
    provider, worker_p = w.provider()
    from broker.core import registry
    from common import vouchers
    worker = w.run(lambda tx: registry.register(
        tx, worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]}, PRICES,
        w.now))
    auth = authorize(w, agent, 100_000)
    claims = vouchers.verify(authorizations.voucher_token(auth, w.signer), w.verify_keys(), w.now)
    ses = w.run(lambda tx: metering.redeem(tx, worker_p, claims, worker["worker_id"], "", "",
                                           w.now, w.config))
    w.run(lambda tx: metering.finish(tx, worker_p, ses["session_id"], {"gpu_ms": 1234}, w.now,
                                     w.config, w.signer))
    assert w.read(lambda tx: spend.totals(tx, wallet["wallet_id"], w.now)) == {
        "day": 1234, "week": 1234, "month": 1234, "all_time": 1234}
    assert w.violations() == []


def test_period_buckets_and_ends():
    monday_noon = 1_717_416_000_000  # 2024-06-03 12:00 UTC, a Monday
    assert spend.buckets(monday_noon) == {"day": "2024-06-03", "week": "2024-W23",
                                          "month": "2024-06", "all_time": "all"}
    assert spend.period_end_ms("day", monday_noon) == monday_noon + 12 * 3600_000
    assert spend.period_end_ms("week", monday_noon) == monday_noon + (6 * 24 + 12) * 3600_000
    assert spend.period_end_ms("month", monday_noon) == 1_719_792_000_000  # 2024-07-01
    assert spend.period_end_ms("all_time", monday_noon) is None


def test_all_time_limit_has_no_retry(w):
    _, _, agent, owner_p = tenant(w)
    set_policy(w, owner_p, limits={"all_time": 1000})
    error = refused(w, lambda tx: authorizations.authorize(
        tx, agent, 1001, {}, 60, w.now, w.config, w.signer.key_id))
    assert error.reason == "SPEND_LIMIT_EXCEEDED" and error.retry_after_ms is None


def test_max_per_authorization(w):
    _, _, agent, owner_p = tenant(w)
    set_policy(w, owner_p, max_per_authorization=5000)
    error = refused(w, lambda tx: authorizations.authorize(
        tx, agent, 5001, {}, 60, w.now, w.config, w.signer.key_id))
    assert (error.code, error.reason) == (Code.PERMISSION_DENIED, "POLICY_AMOUNT_ABOVE_MAX")
    assert error.quota_violations
    assert authorize(w, agent, 5000)["state"] == "held"


def test_wallet_policy_replaces_the_tenant_default(w):
    _, wallet, agent, owner_p = tenant(w)
    set_policy(w, owner_p, max_per_authorization=10)
    assert refused(w, lambda tx: authorizations.authorize(
        tx, agent, 11, {}, 60, w.now, w.config, w.signer.key_id)).reason == \
        "POLICY_AMOUNT_ABOVE_MAX"
    set_policy(w, owner_p, wallet["wallet_id"], max_per_authorization=100)
    assert authorize(w, agent, 50)["state"] == "held"
    pol, source = w.read(lambda tx: policy.get_policy(tx, agent, ""))
    assert (source, pol["max_per_authorization"]) == ("wallet", 100)
    w.run(lambda tx: policy.set_policy(tx, owner_p, wallet["wallet_id"], {}, True, w.now))
    pol, source = w.read(lambda tx: policy.get_policy(tx, agent, ""))
    assert (source, pol["max_per_authorization"]) == ("tenant", 10)


def test_scope_rules(w):
    _, _, agent, owner_p = tenant(w)
    set_policy(w, owner_p, scope_rules={"allowed_models": ["tiny-lm"],
                                        "blocked_resource_classes": ["gpu.h100"]})

    def attempt(scope):
        return refused(w, lambda tx: authorizations.authorize(
            tx, agent, 10, dict(scope), 60, w.now, w.config, w.signer.key_id))

    assert attempt({}).reason == "POLICY_MODEL_NOT_ALLOWED"  # it must name a model
    assert attempt({"model": "big-lm"}).reason == "POLICY_MODEL_NOT_ALLOWED"
    assert attempt({"model": "tiny-lm"}).reason == "POLICY_RESOURCE_CLASS_NOT_ALLOWED"
    assert attempt({"model": "tiny-lm", "resource_class": "gpu.h100"}).reason == \
        "POLICY_RESOURCE_CLASS_NOT_ALLOWED"
    ok = authorize(w, agent, 10, {"model": "tiny-lm", "resource_class": "cpu"})
    assert ok["scope"]["model"] == "tiny-lm"


def test_price_caps_narrow_the_scope(w):
    _, _, agent, owner_p = tenant(w)
    set_policy(w, owner_p, max_prices={"gpu_second_price": 500})
    auth = authorize(w, agent, 10)
    assert auth["scope"]["max_prices"]["gpu_second_price"] == 500
    assert authorize(w, agent, 10, {"max_prices": {"gpu_second_price": 400}})["scope"][
        "max_prices"]["gpu_second_price"] == 400
    error = refused(w, lambda tx: authorizations.authorize(
        tx, agent, 10, {"max_prices": {"gpu_second_price": 501}}, 60, w.now, w.config,
        w.signer.key_id))
    assert error.reason == "POLICY_PRICE_ABOVE_MAX"


def test_spend_velocity_per_key_with_retry(w):
    _, _, agent, owner_p = tenant(w)
    set_policy(w, owner_p, rate_limits={"spend_per_minute": 1000})
    authorize(w, agent, 600)
    w.now += 10_000
    authorize(w, agent, 300)
    error = refused(w, lambda tx: authorizations.authorize(
        tx, agent, 200, {}, 60, w.now, w.config, w.signer.key_id))
    assert (error.code, error.reason) == (Code.RESOURCE_EXHAUSTED, "SPEND_VELOCITY_EXCEEDED")
    assert error.retry_after_ms == 50_000  # when the 600 leaves the window
    assert error.quota_violations
    w.now += 50_001
    authorize(w, agent, 200)
    # An amount above the limit on its own can never pass: no RetryInfo.
    assert refused(w, lambda tx: authorizations.authorize(
        tx, agent, 1001, {}, 60, w.now, w.config, w.signer.key_id)).retry_after_ms is None


def test_policy_changes_are_journaled_and_validated(w):
    owner, wallet, _, owner_p = tenant(w)
    set_policy(w, owner_p, limits={"daily": 7})
    set_policy(w, owner_p, limits={"daily": 8})
    entries = w.read(lambda tx: [e for _, e in tx.scan("journal")])
    sets = [e for e in entries if e["kind"] == "policy_set"]
    assert [e["data"]["policy"]["limits"]["daily"] for e in sets] == [7, 8]
    assert [e["data"]["policy"]["version"] for e in sets] == [1, 2]
    assert w.read(journal.verify_tx) == []
    for bad in ({"limits": {"daily": -1}}, {"max_per_authorization": 2**63},
                {"scope_rules": {"allowed_models": ["x"] * 65}},
                {"approvals": {"timeout_seconds": 10**9}},
                {"alerts": {"freeze_on": ["nope"]}}, {"alerts": {"burst_factor": 1}}):
        error = refused(w, lambda tx, bad=bad: policy.set_policy(
            tx, owner_p, "", bad, False, w.now))
        assert error.code == Code.INVALID_ARGUMENT
    other_owner, _, _, other_p = tenant(w)
    assert refused(w, lambda tx: policy.set_policy(
        tx, other_p, wallet["wallet_id"], {}, False, w.now)).reason == "WALLET_NOT_FOUND"


# -- approvals ------------------------------------------------------------------------------


def approval_policy(w, owner_p, reserve: bool, timeout_s: int = 600):
    set_policy(w, owner_p, approvals={"threshold": 1000, "timeout_seconds": timeout_s,
                                      "reserve_funds": reserve})


def balance(w, wallet):
    return w.balance(wallet["wallet_id"])


@pytest.mark.parametrize("reserve", [False, True])
def test_approval_approved(w, reserve):
    _, wallet, agent, owner_p = tenant(w)
    approval_policy(w, owner_p, reserve)
    assert authorize(w, agent, 1000)["state"] == "held"  # at the threshold: no approval
    auth = authorize(w, agent, 5000, ttl=30)
    assert auth["state"] == "pending_approval" and not authorizations.has_voucher(auth)
    assert w.read(lambda tx: tx.get("vouchers", auth["voucher_id"])) is None
    assert balance(w, wallet)["pending"] == 1000 + (5000 if reserve else 0)
    page = w.read(lambda tx: approvals.list_pending(tx, owner_p, "", "", 0, ""))
    assert [a["authorization_id"] for a in page["approvals"]] == [auth["authorization_id"]]
    w.now += 5_000
    approval, approved = w.run(lambda tx: approvals.approve(
        tx, owner_p, auth["authorization_id"], "looks fine", w.now))
    assert approval["state"] == "approved" and approval["decided_by"] == owner_p.key_id
    assert approved["state"] == "held" and approved["expire_ms"] == w.now + 30_000
    assert balance(w, wallet)["pending"] == 6000
    assert w.read(lambda tx: approvals.list_pending(tx, owner_p, "", "", 0, ""))["approvals"] == []
    # Decided once only.
    assert refused(w, lambda tx: approvals.deny(
        tx, owner_p, auth["authorization_id"], "no", w.now)).reason == "APPROVAL_NOT_PENDING"
    decided = w.read(lambda tx: [e["data"] for _, e in tx.scan("journal")
                                 if e["kind"] == "approval_decided"])
    assert decided == [{"authorization_id": auth["authorization_id"], "decision": "approved",
                        "reason": "looks fine", "by": owner_p.key_id}]
    assert w.violations() == []


@pytest.mark.parametrize("reserve", [False, True])
def test_approval_denied_and_expired(w, reserve):
    _, wallet, agent, owner_p = tenant(w)
    approval_policy(w, owner_p, reserve, timeout_s=60)
    denied = authorize(w, agent, 5000)
    expired = authorize(w, agent, 7000)
    assert w.read(lambda tx: spend.totals(tx, wallet["wallet_id"], w.now))["day"] == 12_000
    assert refused(w, lambda tx: approvals.deny(
        tx, owner_p, denied["authorization_id"], "", w.now)).code == Code.INVALID_ARGUMENT
    w.run(lambda tx: approvals.deny(tx, owner_p, denied["authorization_id"], "too much", w.now))
    w.now += 30_000
    w.run(lambda tx: sweeps.run(tx, w.now, w.config, w.signer))  # the alert, not expiry yet
    alerts = w.read(lambda tx: [a for _, a in tx.scan("alerts")])
    assert [(a["kind"], a["subject"]) for a in alerts] == [
        ("approval_pending_too_long", expired["authorization_id"])]
    w.now += 30_000
    w.run(lambda tx: sweeps.run(tx, w.now, w.config, w.signer))
    for auth_id, state, reason in (
            (denied["authorization_id"], "denied", "too much"),
            (expired["authorization_id"], "expired", "no answer within 60 s")):
        approval, auth = w.read(lambda tx, a=auth_id: approvals.get(tx, owner_p, a))
        assert (approval["state"], approval["reason"], auth["state"]) == (state, reason, "denied")
    assert balance(w, wallet) == {"posted": 2_000_000, "pending": 0, "available": 2_000_000}
    assert w.read(lambda tx: spend.totals(tx, wallet["wallet_id"], w.now))["day"] == 0
    assert w.violations() == []


def test_only_the_tenants_owner_decides(w):
    _, _, agent, owner_p = tenant(w)
    approval_policy(w, owner_p, True)
    auth = authorize(w, agent, 5000)
    _, _, _, stranger = tenant(w)
    assert refused(w, lambda tx: approvals.approve(
        tx, stranger, auth["authorization_id"], "", w.now)).reason == "AUTHORIZATION_NOT_FOUND"
    assert w.read(lambda tx: approvals.list_pending(tx, stranger, "", "", 0, ""))["approvals"] == []


def test_approval_after_a_freeze_is_refused(w):
    owner, wallet, agent, owner_p = tenant(w)
    approval_policy(w, owner_p, False)
    auth = authorize(w, agent, 5000)
    from broker.core import wallets
    w.run(lambda tx: wallets.set_frozen(tx, owner["owner_id"], wallet["wallet_id"], True, w.now))
    assert refused(w, lambda tx: approvals.approve(
        tx, owner_p, auth["authorization_id"], "", w.now)).reason == "WALLET_FROZEN"


def test_a_reservation_that_times_out_first_is_still_closed_as_expired(w):
    """If the hold sweep ever reached a reservation before the approval sweep, the
    request still ends denied-by-expiry and the counters stay right."""
    _, wallet, agent, owner_p = tenant(w)
    approval_policy(w, owner_p, True, timeout_s=10)
    auth = authorize(w, agent, 5000)
    w.now = T0 + 10_000 + policy.RESERVATION_GRACE_MS
    w.run(lambda tx: metering.expire_due(tx, w.now, w.config, w.signer))
    assert refused(w, lambda tx: approvals.approve(
        tx, owner_p, auth["authorization_id"], "", w.now)).reason == "APPROVAL_NOT_PENDING"
    w.run(lambda tx: sweeps.run(tx, w.now, w.config, w.signer))
    approval, _ = w.read(lambda tx: approvals.get(tx, owner_p, auth["authorization_id"]))
    assert approval["state"] == "expired"
    assert balance(w, wallet)["pending"] == 0
    assert w.violations() == []
